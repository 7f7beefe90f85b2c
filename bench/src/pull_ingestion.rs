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
use citypop_schemas::document::{self, CityDocument};
use citypop_tests::kafka::Kafka;
use citypop_tests::{Names, Readiness, Stack, spawn_indexer_with};
use futures::StreamExt;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use serde_json::{Value, json};

use crate::measures::{Bench, DrainTarget, Record};
use crate::preload::{self, Order};
use crate::report::{
    CPU_CEILING, CPU_CITYPOP, CPU_ENGINE, CPU_TOTAL, Sample as ReportSample, Target,
};
use crate::stall::Watch;

/// Sends in flight at once while filling the two topics.
const IN_FLIGHT: usize = 10_000;
/// How often the drains are polled; each poll costs the engine a stats request
/// (pull) or nothing of the engine's (the indexer's committed offsets).
const POLL: Duration = Duration::from_millis(100);
/// A drain that is still moving but takes longer is too slow to measure (one that
/// stops moving fails sooner: `crate::stall`).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Final documents checked, by id, version and population, after each run.
const SAMPLE: usize = 200;

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

/// One order's two topics: Avro for the indexer (created by its `setup`, as in
/// production) and the plugin's JSON, message for message at the same offsets.
pub struct Twins {
    avro: Names,
    json_topic: String,
    partitions: usize,
    /// The final document of every city.
    expected: HashMap<String, CityDocument>,
}

impl Twins {
    async fn fill(bench: &Bench, order: Order) -> anyhow::Result<Self> {
        let stack = &bench.stack;
        let avro = Names::unique(&format!("bench-p7-{}", order.name()));
        let json_topic = format!("{}-pull-json", avro.topic);
        bench.setup(&avro).await;
        let kafka = Kafka::connect(&stack.kafka);
        let partitions = kafka.end_offsets(&avro.topic).len();
        ensure!(partitions > 0, "indexer setup left no topic {}", avro.topic);
        kafka.create_topic(&json_topic, partitions as i32).await;
        // The empty first index `indexer setup` made.
        let first = only_index_behind(&bench.http, &stack.elasticsearch, &avro.alias).await?;
        delete_index(&bench.http, &stack.elasticsearch, &first).await?;
        eprintln!(
            "    P7 filling {} (Avro) and {json_topic} (JSON), {} events, {} partitions",
            avro.topic, bench.args.events, partitions
        );
        let cities = order.cities(bench.args.events, bench.args.cities, bench.args.seed)?;
        let expected = fill(&stack.kafka, &avro.topic, &json_topic, &cities).await?;
        Ok(Self {
            avro,
            json_topic,
            partitions,
            expected,
        })
    }

    pub async fn delete(self, stack: &Stack) {
        let kafka = Kafka::connect(&stack.kafka);
        kafka.delete_topic(&self.json_topic).await;
        kafka.delete_topic(&self.avro.topic).await;
    }
}

/// One round of P7, per key order: one indexer drain, then one pull drain.
pub async fn p7(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    check_engine(&bench.http, &bench.stack.elasticsearch).await?;
    let engine_pid = bench
        .engine_pid
        .context("P7 needs the engine's pid (its CPU per event)")?;
    let mut records = Vec::new();
    for order in bench.args.order.clone() {
        if !bench.pull_twins.contains_key(&order) {
            let twins = Twins::fill(bench, order).await?;
            bench.pull_twins.insert(order, twins);
        }
        let twins = &bench.pull_twins[&order];
        let events = bench.args.events;
        eprintln!("==> P7 ({}): indexer, then pull ingestion", order.name());
        let names = twins.avro.rebuild(&format!(
            "run{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ));
        let (indexer, shards) = indexer_drain(bench, &names, &twins.expected, engine_pid)
            .await
            .with_context(|| format!("P7 {} indexer", order.name()))?;
        eprintln!("    indexer: {}", describe(&indexer));
        let pull = pull_drain(
            &bench.http,
            &bench.stack,
            &format!("{}-pull", names.alias),
            &twins.json_topic,
            twins.partitions,
            events,
            &twins.expected,
            engine_pid,
        )
        .await
        .with_context(|| format!("P7 {} pull ingestion", order.name()))?;
        eprintln!("    pull:    {}", describe(&pull));
        let (rate_target, cpu_target) = match order {
            Order::RoundRobin => (Target::RatioAtLeast(1.0), Target::RatioAtMost(1.0)),
            Order::Zipf => (Target::RatioAtLeast(2.0), Target::None),
            Order::Random => (Target::None, Target::None),
        };
        let note = format!(
            "{} partitions; pull ingestion: one shard per partition; indexer: its default, {shards} shard(s)",
            twins.partitions
        );
        records.push(
            Record::new(
                "P7",
                format!(
                    "indexer drain vs pull ingestion, {} (events/s)",
                    order.name()
                ),
                rate_target,
                ReportSample::new(indexer.events_per_second)
                    .ceiling(pull.events_per_second)
                    .extra(CPU_ENGINE, Some(indexer.engine_cpu_us_per_event))
                    .extra(CPU_CITYPOP, indexer.indexer_cpu_us_per_event)
                    .extra(CPU_TOTAL, Some(indexer.total_cpu_us_per_event()))
                    .extra(CPU_CEILING, Some(pull.engine_cpu_us_per_event))
                    .note(note),
            )
            .against("pull ingestion (events/s)"),
        );
        records.push(
            Record::new(
                "P7",
                format!("total CPU per event, {} (µs)", order.name()),
                cpu_target,
                ReportSample::new(indexer.total_cpu_us_per_event())
                    .ceiling(pull.total_cpu_us_per_event()),
            )
            .against("pull ingestion (µs)"),
        );
    }
    Ok(records)
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
    let producer = preload::producer(bootstrap)?;
    let mut documents = preload::send_events(&producer, avro_topic, cities).await?;
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
    bench: &Bench,
    names: &Names,
    expected: &HashMap<String, CityDocument>,
    engine_pid: u32,
) -> anyhow::Result<(Drain, usize)> {
    let (stack, http, events) = (&bench.stack, &bench.http, bench.args.events);
    let env = bench.indexer_settings();
    // Made before the clock starts: its Kafka client is the bench's, not the drain's.
    let target = DrainTarget::new(&Kafka::connect(&stack.kafka), names);
    // Timed from the start of the process, as pull ingestion is from the creation of
    // its index: both then pay for creating the index and starting their consumers.
    let mut start = CpuAt::take(engine_pid, None)?;
    start.indexer = Some(Duration::ZERO);
    let indexer = spawn_indexer_with(stack, names, &env, Readiness::Ready).await;
    target
        .until_committed(&mut target.progress(), start.at, DRAIN_TIMEOUT)
        .await?;
    let end = CpuAt::take(engine_pid, Some(indexer.pid()))?;
    indexer.terminate().await;
    let drain = start.drain(&end, events);

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
    stack: &Stack,
    index: &str,
    topic: &str,
    partitions: usize,
    events: usize,
    expected: &HashMap<String, CityDocument>,
    engine_pid: u32,
) -> anyhow::Result<Drain> {
    let (engine, bootstrap) = (stack.elasticsearch.as_str(), stack.kafka.as_str());
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
    let start = CpuAt::take(engine_pid, None)?;
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
    let mut processed = Watch::new(0, Instant::now());
    loop {
        let counts = pull_counts(http, engine, index).await?;
        ensure!(
            counts.failed == 0,
            "pull ingestion failed or dropped messages: {counts:?}"
        );
        if counts.processed >= events as u64 {
            break;
        }
        if let Some(still) = processed.stalled(counts.processed, Instant::now()) {
            bail!(
                "pull ingestion stopped: {} of {events} messages processed, none for {still:?}",
                counts.processed
            );
        }
        ensure!(
            start.at.elapsed() < DRAIN_TIMEOUT,
            "pull ingestion stalled: {counts:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let end = CpuAt::take(engine_pid, None)?;
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
    primary_shards(http, engine, index).await
}

/// The primary shard count `index` was created with.
pub(crate) async fn primary_shards(
    http: &reqwest::Client,
    engine: &str,
    index: &str,
) -> anyhow::Result<usize> {
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

pub(crate) async fn only_index_behind(
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

/// CPU time of the engine (and the indexer) at one instant.
struct CpuAt {
    at: Instant,
    engine: Duration,
    indexer: Option<Duration>,
}

impl CpuAt {
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

fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    crate::cpu::cpu_time(pid)
        .with_context(|| format!("the CPU time of process {pid} (/proc/{pid}/stat)"))
}
