//! P7: citypop's indexer against OpenSearch's own pull-based ingestion (the
//! `ingestion-kafka` plugin), side by side on the same engine.
//!
//! Both drain the same events: one Avro topic for the indexer and, beside it, the
//! same events as the plugin's JSON (`{"_id", "_version", "_op_type", "_source"}`)
//! in a second topic, each message in the same partition as its Avro twin and with
//! its offset as `_version`, so both end with the same documents at the same
//! external versions. Runs alternate (indexer, pull, indexer, pull, …) so that a
//! warming engine or a busy neighbour weighs on both alike. For each run: events/s
//! over the drain, and the CPU the engine (and the indexer) spent per event, read
//! from `/proc/<pid>/stat` at the drain's start and end. Kafka's CPU is counted for
//! neither.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use citypop_schemas::CityKey;
use citypop_schemas::document::{self, CityDocument};
use citypop_schemas::event::{self, CityPopulationUpdated, Codec};
use citypop_tests::kafka::Kafka;
use citypop_tests::{Names, Readiness, Stack, spawn_indexer_with};
use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::Distribution;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::{Value, json};

use crate::preload::city_name;

/// Sends in flight at once while filling the two topics.
const IN_FLIGHT: usize = 10_000;
/// How often the drains are polled; each poll costs the engine a stats request
/// (pull) or nothing of the engine's (the indexer's committed offsets).
const POLL: Duration = Duration::from_millis(100);
/// A drain that takes longer has stalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Final documents checked, by id, version and population, after each run.
const SAMPLE: usize = 200;
/// The exponent of the Zipf key order: s ≈ 1.1, as in issue 20's targets.
const ZIPF_EXPONENT: f64 = 1.1;

/// The order in which events name their cities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyOrder {
    /// City `i % cities` for event `i`: every city once per round, so coalescing in
    /// a batch buys nothing.
    RoundRobin,
    /// Cities drawn from a Zipf distribution: a few cities take most updates, as
    /// real traffic does, and coalescing writes each once per batch.
    Zipf,
}

impl KeyOrder {
    pub fn label(self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::Zipf => "zipf",
        }
    }

    /// The city index of every event, the same for every run with these arguments.
    fn cities(self, events: usize, cities: usize) -> anyhow::Result<Vec<usize>> {
        Ok(match self {
            Self::RoundRobin => (0..events).map(|i| i % cities).collect(),
            Self::Zipf => {
                let zipf = rand_distr::Zipf::new(cities as f64, ZIPF_EXPONENT)
                    .context("a Zipf distribution over the cities")?;
                let mut rng = StdRng::seed_from_u64(20);
                (0..events)
                    // Draws are 1..=cities.
                    .map(|_| (zipf.sample(&mut rng) as usize).saturating_sub(1))
                    .collect()
            }
        })
    }
}

/// What P7 needs from the rest of the bench.
pub struct Settings {
    pub events: usize,
    pub cities: usize,
    pub bulk_size: usize,
    /// Measured rounds (one indexer run and one pull run each).
    pub repeat: usize,
    /// Discard one round first: a cold engine alone moves a drain by up to 2×.
    pub warm_up: bool,
}

/// One drain.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Drain {
    pub events_per_second: f64,
    pub engine_cpu_us_per_event: f64,
    /// `None` for pull ingestion, which has no process of its own.
    pub indexer_cpu_us_per_event: Option<f64>,
}

impl Drain {
    pub fn total_cpu_us_per_event(&self) -> f64 {
        self.engine_cpu_us_per_event + self.indexer_cpu_us_per_event.unwrap_or(0.0)
    }
}

/// Every measured run of one key order.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub order: KeyOrder,
    pub partitions: usize,
    pub indexer_shards: usize,
    pub indexer: Vec<Drain>,
    pub pull: Vec<Drain>,
}

/// Fails unless the engine is OpenSearch 3 or newer with the plugin loaded, and
/// says how to get there.
pub async fn check_engine(http: &reqwest::Client, engine: &str) -> anyhow::Result<()> {
    // Elasticsearch's integ-test-zip answers `GET /` with 405 and no body.
    let root: Value = http
        .get(engine)
        .send()
        .await?
        .json()
        .await
        .unwrap_or_default();
    let distribution = root["version"]["distribution"]
        .as_str()
        .unwrap_or("elasticsearch");
    let version = root["version"]["number"].as_str().unwrap_or_default();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    ensure!(
        distribution == "opensearch" && major >= 3,
        "P7 needs OpenSearch 3 or newer (pull-based ingestion), not {distribution} {version}: \
         run the stack with CITYPOP_ENGINE=opensearch CITYPOP_OPENSEARCH_PULL_INGESTION=on"
    );
    let plugins = http
        .get(format!("{engine}/_cat/plugins?h=component"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    ensure!(
        plugins.lines().any(|l| l.trim() == "ingestion-kafka"),
        "P7: OpenSearch {version} has no ingestion-kafka plugin: restart the stack with \
         CITYPOP_OPENSEARCH_PULL_INGESTION=on (deploy/local/stack.sh down, then up)"
    );
    Ok(())
}

/// Fills the Avro topic (created by the indexer's `setup`, as in production) and
/// its JSON twin, then runs `settings.repeat` interleaved rounds.
pub async fn compare(
    stack: &Stack,
    http: &reqwest::Client,
    base: &Names,
    order: KeyOrder,
    settings: &Settings,
) -> anyhow::Result<Comparison> {
    let avro = base.rebuild(order.label());
    let json_topic = format!("{}-pull-json", avro.topic);
    citypop_tests::run_indexer_command(
        stack,
        &avro,
        &["setup"],
        &[("CITYPOP_LOG", "warn".to_owned())],
        Duration::from_secs(120),
    )
    .await;
    let kafka = Kafka::connect(&stack.kafka);
    let partitions = kafka.end_offsets(&avro.topic).len();
    ensure!(partitions > 0, "indexer setup left no topic {}", avro.topic);
    kafka.create_topic(&json_topic, partitions as i32).await;

    eprintln!(
        "    filling {} (Avro) and {json_topic} (JSON), {} events, {} partitions",
        avro.topic, settings.events, partitions
    );
    let cities = order.cities(settings.events, settings.cities)?;
    let expected = fill(&stack.kafka, &avro.topic, &json_topic, &cities).await?;
    let engine_pid = engine_pid(http, &stack.elasticsearch).await?;

    let mut comparison = Comparison {
        order,
        partitions,
        indexer_shards: 0,
        indexer: Vec::new(),
        pull: Vec::new(),
    };
    let rounds = settings.repeat + usize::from(settings.warm_up);
    for round in 0..rounds {
        let label = if settings.warm_up && round == 0 {
            "warm-up".to_owned()
        } else {
            format!("round {}", round + 1 - usize::from(settings.warm_up))
        };
        let names = avro.rebuild(&format!("run{round}"));
        let (indexer, shards) = indexer_drain(stack, http, &names, settings, &expected, engine_pid)
            .await
            .with_context(|| format!("P7 {} indexer {label}", order.label()))?;
        eprintln!("    {label} indexer: {}", describe(&indexer));
        let index = format!("{}-pull", names.alias);
        let pull = pull_drain(
            http,
            &stack.elasticsearch,
            &stack.kafka,
            &index,
            &json_topic,
            partitions,
            settings.events,
            &expected,
            engine_pid,
        )
        .await
        .with_context(|| format!("P7 {} pull ingestion {label}", order.label()))?;
        eprintln!("    {label} pull:    {}", describe(&pull));
        if settings.warm_up && round == 0 {
            continue;
        }
        comparison.indexer_shards = shards;
        comparison.indexer.push(indexer);
        comparison.pull.push(pull);
    }
    kafka.delete_topic(&json_topic).await;
    kafka.delete_topic(&avro.topic).await;
    // The empty first index `indexer setup` made.
    let first = only_index_behind(http, &stack.elasticsearch, &avro.alias).await?;
    delete_index(http, &stack.elasticsearch, &first).await?;
    Ok(comparison)
}

fn describe(drain: &Drain) -> String {
    format!(
        "{:.0} events/s, engine {:.1} µs/event, indexer {}, total {:.1} µs/event",
        drain.events_per_second,
        drain.engine_cpu_us_per_event,
        drain
            .indexer_cpu_us_per_event
            .map_or("—".to_owned(), |us| format!("{us:.1} µs/event")),
        drain.total_cpu_us_per_event()
    )
}

/// Writes every event to the Avro topic, then its JSON twin to the same partition
/// of the JSON topic, partition by partition in offset order, so the JSON message
/// lands at the same offset (checked) and pull ingestion sees the same sequence.
/// Returns the final document of every city.
async fn fill(
    bootstrap: &str,
    avro_topic: &str,
    json_topic: &str,
    cities: &[usize],
) -> anyhow::Result<HashMap<String, CityDocument>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        // Idempotence keeps each partition in send order, which the JSON twin relies on.
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let codec = Codec::new();
    let sent: Vec<anyhow::Result<CityDocument>> = futures::stream::iter(cities.iter().enumerate())
        .map(|(i, &city)| {
            let (producer, codec) = (&producer, &codec);
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
                let record = FutureRecord::to(avro_topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                let delivery = producer
                    .send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("P7 fill: {e}"))?;
                Ok(CityDocument::from_event(
                    &key,
                    &event,
                    delivery.partition,
                    delivery.offset,
                ))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let mut documents = sent.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    documents.sort_unstable_by_key(|d| (d.partition, d.version));

    let twins: Vec<anyhow::Result<()>> = futures::stream::iter(&documents)
        .map(|doc| {
            let producer = &producer;
            async move {
                // The document the indexer writes, as the plugin's message; the plugin
                // wants the version as a string (a number fails with a cast error).
                let message = json!({
                    "_id": doc.key,
                    "_version": doc.version.to_string(),
                    "_op_type": "index",
                    "_source": doc,
                })
                .to_string();
                let record = FutureRecord::to(json_topic)
                    .key(&doc.key)
                    .partition(doc.partition)
                    .payload(&message);
                let delivery = producer
                    .send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("P7 fill (JSON): {e}"))?;
                ensure!(
                    delivery.offset == doc.version,
                    "the JSON twin of {}:{} landed at offset {}",
                    doc.partition,
                    doc.version,
                    delivery.offset
                );
                Ok(())
            }
        })
        // `buffered` polls in order, so each partition's sends are queued in order.
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    twins.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

    let mut last: HashMap<String, CityDocument> = HashMap::new();
    for doc in documents {
        // Sorted by partition and offset, and a key has one partition: the last wins.
        last.insert(doc.key.clone(), doc);
    }
    Ok(last)
}

/// The indexer drains the Avro topic into a fresh index (its default shard count),
/// timed from its process start until its group has committed everything.
/// Returns the drain and the index's shard count.
async fn indexer_drain(
    stack: &Stack,
    http: &reqwest::Client,
    names: &Names,
    settings: &Settings,
    expected: &HashMap<String, CityDocument>,
    engine_pid: u32,
) -> anyhow::Result<(Drain, usize)> {
    let env = [
        ("CITYPOP_BULK_MAX_DOCUMENTS", settings.bulk_size.to_string()),
        ("CITYPOP_COMMIT_INTERVAL", "200ms".to_owned()),
        ("CITYPOP_LOG", "warn".to_owned()),
    ];
    let kafka = Kafka::connect(&stack.kafka);
    let ends: std::collections::BTreeMap<i32, i64> = kafka
        .end_offsets(&names.topic)
        .into_iter()
        .filter(|(_, end)| *end > 0)
        .collect();
    // Timed from the start of the process, as pull ingestion is from the creation of
    // its index: both then pay for creating the index and starting their consumers.
    let mut start = Sample::take(engine_pid, None)?;
    start.indexer = Some(Duration::ZERO);
    let indexer = spawn_indexer_with(stack, names, &env, Readiness::Ready).await;
    while kafka.committed(&names.group, &names.topic) != ends {
        ensure!(
            start.at.elapsed() < DRAIN_TIMEOUT,
            "the indexer did not drain the topic"
        );
        tokio::time::sleep(POLL).await;
    }
    let end = Sample::take(engine_pid, Some(indexer.pid()))?;
    indexer.terminate().await;
    let drain = start.drain(&end, settings.events);

    let index = only_index_behind(http, &stack.elasticsearch, &names.alias).await?;
    let shards = verify(http, &stack.elasticsearch, &index, expected).await?;
    delete_index(http, &stack.elasticsearch, &index).await?;
    Ok((drain, shards))
}

/// Pull ingestion drains the JSON topic into a new index with the same mappings,
/// one shard per partition and segment replication (what the plugin requires),
/// timed from the create request until every message is processed.
#[allow(clippy::too_many_arguments)]
async fn pull_drain(
    http: &reqwest::Client,
    engine: &str,
    bootstrap: &str,
    index: &str,
    topic: &str,
    partitions: usize,
    events: usize,
    expected: &HashMap<String, CityDocument>,
    engine_pid: u32,
) -> anyhow::Result<Drain> {
    let body = json!({
        "settings": {
            "index": {
                "number_of_shards": partitions,
                // As the bench's indexer runs: one node, replicas never assigned.
                "number_of_replicas": 0,
                "replication.type": "SEGMENT",
                "ingestion_source": {
                    "type": "kafka",
                    "pointer.init.reset": "earliest",
                    "param": {"topic": topic, "bootstrap_servers": bootstrap}
                }
            }
        },
        "mappings": document::mappings(),
    });
    // Timed from the create request: it returns only once the shards have started,
    // and with a backlog that took the whole drain here (the first stats answer
    // after it showed all 200,000 events processed). The indexer is timed from its
    // process start alike.
    let start = Sample::take(engine_pid, None)?;
    let response = http
        .put(format!("{engine}/{index}"))
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        bail!(
            "creating {index} with an ingestion source: {status} {}",
            response.text().await.unwrap_or_default()
        );
    }
    loop {
        let counts = pull_counts(http, engine, index).await?;
        ensure!(
            counts.failed == 0,
            "pull ingestion failed or dropped messages: {counts:?}"
        );
        if counts.processed >= events as u64 {
            break;
        }
        ensure!(
            start.at.elapsed() < DRAIN_TIMEOUT,
            "pull ingestion stalled: {counts:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let end = Sample::take(engine_pid, None)?;
    let drain = start.drain(&end, events);
    verify(http, engine, index, expected).await?;
    delete_index(http, engine, index).await?;
    Ok(drain)
}

/// The index's pull-ingestion counters, summed over its shards.
#[derive(Debug, Default)]
struct PullCounts {
    /// Indexed, or dropped as an older version: done either way.
    processed: u64,
    /// Invalid, failed or dropped messages: none is expected here.
    failed: u64,
}

async fn pull_counts(
    http: &reqwest::Client,
    engine: &str,
    index: &str,
) -> anyhow::Result<PullCounts> {
    let stats: Value = http
        .get(format!(
            "{engine}/{index}/_stats?level=shards&filter_path=indices.*.shards.*.polling_ingest_stats"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut counts = PullCounts::default();
    let shards = stats["indices"][index]["shards"]
        .as_object()
        .into_iter()
        .flat_map(|shards| shards.values())
        .flat_map(|copies| copies.as_array().into_iter().flatten());
    for shard in shards {
        let stats = &shard["polling_ingest_stats"];
        let count = |path: &str| stats.pointer(path).and_then(Value::as_u64).unwrap_or(0);
        counts.processed += count("/message_processor_stats/total_processed_count");
        counts.failed += count("/message_processor_stats/total_invalid_message_count")
            + count("/message_processor_stats/total_failed_count")
            + count("/message_processor_stats/total_failures_dropped_count")
            + count("/consumer_stats/total_poller_message_dropped_count");
    }
    Ok(counts)
}

/// The index holds one document per city, and a sample of them carries the last
/// event's version and population. A search by ids, not `GET _doc`: pull ingestion
/// puts a document on its partition's shard, where a GET by id does not look.
/// Returns the index's primary shard count.
async fn verify(
    http: &reqwest::Client,
    engine: &str,
    index: &str,
    expected: &HashMap<String, CityDocument>,
) -> anyhow::Result<usize> {
    http.post(format!("{engine}/{index}/_refresh"))
        .send()
        .await?
        .error_for_status()?;
    let count: Value = http
        .get(format!("{engine}/{index}/_count"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        count["count"].as_u64() == Some(expected.len() as u64),
        "{index} holds {} documents, not {}",
        count["count"],
        expected.len()
    );
    let sample: Vec<&CityDocument> = expected.values().take(SAMPLE).collect();
    let ids: Vec<&str> = sample.iter().map(|d| d.key.as_str()).collect();
    let found: Value = http
        .post(format!("{engine}/{index}/_search"))
        .json(&json!({"query": {"ids": {"values": ids}}, "version": true, "size": SAMPLE}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let hits: HashMap<&str, &Value> = found["hits"]["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|hit| Some((hit["_id"].as_str()?, hit)))
        .collect();
    for doc in sample {
        let hit = hits
            .get(doc.key.as_str())
            .with_context(|| format!("{index} lacks {}", doc.key))?;
        ensure!(
            hit["_version"].as_i64() == Some(doc.version)
                && hit["_source"]["population"].as_i64() == doc.population,
            "{index} holds {} at version {} with population {}, not {} with {:?}",
            doc.key,
            hit["_version"],
            hit["_source"]["population"],
            doc.version,
            doc.population
        );
    }
    let settings: Value = http
        .get(format!("{engine}/{index}/_settings/index.number_of_shards"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let shards = settings
        .as_object()
        .and_then(|indices| indices.values().next())
        .and_then(|s| s["settings"]["index"]["number_of_shards"].as_str())
        .and_then(|s| s.parse().ok())
        .context("the index's shard count")?;
    Ok(shards)
}

async fn only_index_behind(
    http: &reqwest::Client,
    engine: &str,
    alias: &str,
) -> anyhow::Result<String> {
    let aliases: Value = http
        .get(format!("{engine}/_alias/{alias}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    aliases
        .as_object()
        .and_then(|indices| indices.keys().next().cloned())
        .with_context(|| format!("no index behind {alias}"))
}

/// Each run's index goes once verified: a node with every earlier run's shards
/// would be a different engine for the next run.
async fn delete_index(http: &reqwest::Client, engine: &str, index: &str) -> anyhow::Result<()> {
    http.delete(format!("{engine}/{index}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// The engine's OS pid, as the node reports it (the bench runs beside it).
async fn engine_pid(http: &reqwest::Client, engine: &str) -> anyhow::Result<u32> {
    let nodes: Value = http
        .get(format!(
            "{engine}/_nodes/_local/process?filter_path=nodes.*.process.id"
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    nodes["nodes"]
        .as_object()
        .and_then(|nodes| nodes.values().next())
        .and_then(|node| node["process"]["id"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .context("the engine's process id (_nodes/_local/process)")
}

/// CPU time of the engine (and the indexer) at one instant.
struct Sample {
    at: Instant,
    engine: Duration,
    indexer: Option<Duration>,
}

impl Sample {
    fn take(engine_pid: u32, indexer_pid: Option<u32>) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            engine: cpu_time(engine_pid)?,
            indexer: indexer_pid.map(cpu_time).transpose()?,
        })
    }

    fn drain(&self, end: &Self, events: usize) -> Drain {
        let per_event = |spent: Duration| spent.as_secs_f64() * 1e6 / events as f64;
        Drain {
            events_per_second: events as f64 / end.at.duration_since(self.at).as_secs_f64(),
            engine_cpu_us_per_event: per_event(end.engine.saturating_sub(self.engine)),
            indexer_cpu_us_per_event: self
                .indexer
                .zip(end.indexer)
                .map(|(a, b)| per_event(b.saturating_sub(a))),
        }
    }
}

/// User plus system CPU time of a process, all its threads, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of proc(5); `fields` starts at field 3.
    let ticks = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {n} of /proc/{pid}/stat"))
    };
    let ticks = ticks(14)? + ticks(15)?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / CLOCK_TICKS_PER_SECOND,
    ))
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux architecture the bench runs on (the
/// kernel's USER_HZ, fixed by its ABI).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Median and spread (min–max) of one figure over the runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut values: Vec<f64> = values.into_iter().collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Self {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_value_or_the_mean_of_the_two() {
        let odd = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn zipf_order_stays_within_the_cities_and_favours_the_first() {
        let cities = KeyOrder::Zipf.cities(10_000, 100).unwrap();
        assert!(cities.iter().all(|&c| c < 100));
        let first = cities.iter().filter(|&&c| c == 0).count();
        let last = cities.iter().filter(|&&c| c == 99).count();
        assert!(first > 10 * last.max(1), "first {first}, last {last}");
        assert_eq!(cities, KeyOrder::Zipf.cities(10_000, 100).unwrap());
    }

    #[test]
    fn cpu_time_reads_this_process() {
        let spent = cpu_time(std::process::id()).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {}
        assert!(cpu_time(std::process::id()).unwrap() > spent);
    }
}
