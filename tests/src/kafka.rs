//! Talking to Kafka directly from tests: producing raw messages (good, poison and
//! tombstones), reading a topic back, and inspecting a group's committed offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use citypop_schemas::event::{self, CityPopulationUpdated, Codec};
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A v2 of the event, adding a field with a default as the contract allows: the
/// schema a newer producer might write before the indexer knows it. Not published:
/// the product does not write it.
pub const SCHEMA_V2: &str = r#"{"type": "record", "name": "CityPopulationUpdated", "namespace": "io.citypop.events",
  "fields": [
    {"name": "event_id", "type": "string"},
    {"name": "city", "type": "string"},
    {"name": "population", "type": "long"},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "country", "type": "string", "default": ""}
  ]}"#;

/// An update written with [`SCHEMA_V2`], as a newer producer would: `schema` poison
/// for an indexer that has not been taught that schema yet.
pub fn encode_v2(city: &str, population: i64) -> Vec<u8> {
    use apache_avro::types::Value as Avro;
    let schema = apache_avro::Schema::parse_str(SCHEMA_V2).expect("the v2 test schema parses");
    let fingerprint = event::Fingerprint::of_schema(SCHEMA_V2).expect("the v2 fingerprint");
    let record = Avro::Record(vec![
        (
            "event_id".into(),
            Avro::String(uuid::Uuid::now_v7().to_string()),
        ),
        ("city".into(), Avro::String(city.into())),
        ("population".into(), Avro::Long(population)),
        ("occurred_at".into(), Avro::TimestampMicros(now_micros())),
        ("country".into(), Avro::String("FR".into())),
    ]);
    let mut payload = vec![0xC3, 0x01];
    payload.extend(fingerprint.to_bytes());
    payload.extend(apache_avro::to_avro_datum(&schema, record).expect("encoding a v2 event"));
    payload
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

pub struct Kafka {
    bootstrap: String,
    producer: FutureProducer,
    codec: Codec,
}

impl Kafka {
    pub fn connect(bootstrap: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Up to the broker's own limit (message.max.bytes, 1 MiB + 12 bytes by
            // default), for poison just under it.
            .set("message.max.bytes", "1048000")
            .create()
            .expect("creating the test producer");
        Self {
            bootstrap: bootstrap.to_owned(),
            producer,
            codec: Codec::new(),
        }
    }

    /// Produces one message and returns its (partition, offset).
    pub async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key).headers(owned);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let delivery = self
            .producer
            .send(record, TIMEOUT)
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        (delivery.partition, delivery.offset)
    }

    /// The Avro single-object encoding of an update, as producer-api writes it.
    pub fn encode(&self, city: &str, population: i64, occurred_at_micros: i64) -> Vec<u8> {
        self.codec
            .encode(&CityPopulationUpdated {
                event_id: uuid::Uuid::now_v7().to_string(),
                city: city.to_owned(),
                population,
                occurred_at: occurred_at_micros,
            })
            .expect("encoding a test event")
    }

    /// Produces an update of `city` (its key derived as producer-api would).
    pub async fn produce_update(&self, topic: &str, city: &str, population: i64) -> (i32, i64) {
        let key = citypop_schemas::CityKey::parse(city).expect("a valid test city");
        let payload = self.encode(city, population, now_micros());
        self.produce(
            topic,
            key.as_str(),
            Some(&payload),
            &[("content-type", event::CONTENT_TYPE)],
        )
        .await
    }

    /// Produces many updates at once (up to 64 in flight) and returns, per update,
    /// its key, offset and population.
    pub async fn produce_updates(
        &self,
        topic: &str,
        updates: Vec<(String, i64)>,
    ) -> Vec<(String, i64, i64)> {
        use futures::StreamExt;
        futures::stream::iter(updates)
            .map(|(city, population)| async move {
                let (_, offset) = self.produce_update(topic, &city, population).await;
                let key = citypop_schemas::CityKey::parse(&city).expect("a valid test city");
                (key.as_str().to_owned(), offset, population)
            })
            .buffered(64)
            .collect()
            .await
    }

    /// Produces a delete of `city`: a tombstone with the event headers.
    pub async fn produce_tombstone(&self, topic: &str, city: &str) -> (i32, i64) {
        let key = citypop_schemas::CityKey::parse(city).expect("a valid test city");
        let id = uuid::Uuid::now_v7().to_string();
        let at = now_micros().to_string();
        self.produce(
            topic,
            key.as_str(),
            None,
            &[
                (event::HEADER_EVENT_ID, &id),
                (event::HEADER_OCCURRED_AT, &at),
            ],
        )
        .await
    }

    fn consumer(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("creating a test consumer")
    }

    /// Per partition: (partition, end offset).
    pub fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        let consumer = self.consumer("citypop-e2e-inspector");
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .expect("topic metadata");
        metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p.id(), TIMEOUT)
                    .expect("watermarks");
                (p.id(), high)
            })
            .collect()
    }

    /// Every message of `topic`, read from the beginning up to its current end.
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        let ends = self.end_offsets(topic);
        let consumer = self.consumer("citypop-e2e-reader");
        let mut assignment = TopicPartitionList::new();
        for partition in ends.keys() {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assigning partitions");
        let total: i64 = ends.values().sum();
        let mut records = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while (records.len() as i64) < total {
            assert!(
                Instant::now() < deadline,
                "read {} of {total} messages of {topic}",
                records.len()
            );
            if let Some(result) = consumer.poll(Duration::from_millis(200)) {
                let message = result.expect("consuming");
                let headers = message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let value =
                                    h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), value.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        records
    }

    /// The offsets `group` has committed on `topic`, per partition (absent = none).
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        let partitions = self.end_offsets(topic).into_keys();
        self.committed_offsets(group, topic, partitions).read()
    }

    /// A reader of the offsets `group` has committed on `partitions` of `topic`,
    /// for a loop that polls them: it keeps one client for every read, where each
    /// `committed` call makes two (and their connections to the broker).
    pub fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> CommittedOffsets {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(topic, partition);
        }
        CommittedOffsets {
            consumer: self.consumer(group),
            partitions: list,
        }
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("creating an admin client")
    }

    /// Creates `topic` with `partitions` partitions, as an operator would by hand.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]).await;
    }

    /// Creates `topic` with `partitions` and topic-level `configs`, as someone other
    /// than the indexer might have.
    pub async fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin = self.admin();
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        for (name, value) in configs {
            new_topic = new_topic.set(name, value);
        }
        let results = admin
            .create_topics(
                [&new_topic],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .expect("creating the topic");
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
        }
        self.wait_for_leaders(&admin, topic, partitions as usize)
            .await;
    }

    /// The value of a topic's config (e.g. `retention.ms`) and whether it was set on
    /// the topic itself rather than inherited from the broker.
    pub async fn topic_config(&self, topic: &str, name: &str) -> (Option<String>, bool) {
        let described = self
            .admin()
            .describe_configs(
                [&ResourceSpecifier::Topic(topic)],
                &AdminOptions::new().request_timeout(Some(TIMEOUT)),
            )
            .await
            .expect("describing the topic");
        let resource = described
            .into_iter()
            .next()
            .expect("one resource")
            .unwrap_or_else(|e| panic!("describing {topic}: {e}"));
        let entry = resource
            .get(name)
            .unwrap_or_else(|| panic!("{topic} has no config {name}"));
        (
            entry.value.clone(),
            entry.source == ConfigSource::DynamicTopic,
        )
    }

    /// Waits until every one of `partitions` partitions of `topic` has a leader: a
    /// topic just created or grown answers "not leader" for a moment.
    async fn wait_for_leaders(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        topic: &str,
        partitions: usize,
    ) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let led = admin
                .inner()
                .fetch_metadata(Some(topic), TIMEOUT)
                .ok()
                .and_then(|metadata| {
                    let t = metadata.topics().iter().find(|t| t.name() == topic)?;
                    Some(
                        t.error().is_none()
                            && t.partitions().len() == partitions
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0),
                    )
                })
                .unwrap_or(false);
            if led {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} never showed {partitions} partitions with leaders"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Grows `topic` to `partitions` partitions, as `kafka-topics --alter` does.
    pub async fn add_partitions(&self, topic: &str, partitions: usize) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("creating an admin client");
        let results = admin
            .create_partitions(
                &[NewPartitions::new(topic, partitions)],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .expect("adding partitions");
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("adding partitions to {t}: {e}"));
        }
        self.wait_for_leaders(&admin, topic, partitions).await;
    }

    /// Deletes `topic` and waits until the broker no longer lists it.
    pub async fn delete_topic(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("creating an admin client");
        let results = admin
            .delete_topics(
                &[topic],
                &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
            )
            .await
            .expect("deleting the topic");
        for result in results {
            result.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(None, TIMEOUT)
                .expect("metadata");
            if !metadata.topics().iter().any(|t| t.name() == topic) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} still listed after deletion"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// One group's committed offsets on a fixed set of partitions, read through one
/// client (`Kafka::committed_offsets`).
pub struct CommittedOffsets {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
}

impl CommittedOffsets {
    /// Per partition: the committed offset (absent = none committed yet).
    pub fn read(&self) -> BTreeMap<i32, i64> {
        self.consumer
            .committed_offsets(self.partitions.clone(), TIMEOUT)
            .expect("committed offsets")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect()
    }
}
