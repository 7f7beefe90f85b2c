//! The measures, one function each, and what they share: the stack, the preloaded
//! topics (one per key order, filled once) and the live services of P3..P6.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use citypop_tests::kafka::{CommittedOffsets, Kafka};
use citypop_tests::{
    Names, Readiness, Service, Stack, indexer_command_builder, run_indexer_command,
    spawn_indexer_with, spawn_producer_api_with,
};
use serde_json::{Value, json};

use crate::Args;
use crate::cpu::{CpuMeter, micros_per};
use crate::preload::{Order, Preloaded};
use crate::report::{CPU_CEILING, CPU_CITYPOP, CPU_ENGINE, CPU_TOTAL, Report, Sample, Target};
use crate::stall::CommitProgress;

/// One round's figure for one row of the report.
pub struct Record {
    pub id: &'static str,
    pub measure: String,
    pub ceiling_name: Option<&'static str>,
    pub target: Target,
    pub sample: Sample,
}

impl Record {
    pub fn new(
        id: &'static str,
        measure: impl Into<String>,
        target: Target,
        sample: Sample,
    ) -> Self {
        Self {
            id,
            measure: measure.into(),
            ceiling_name: None,
            target,
            sample,
        }
    }

    pub fn against(mut self, ceiling_name: &'static str) -> Self {
        self.ceiling_name = Some(ceiling_name);
        self
    }
}

/// A preloaded topic and its ceilings' bodies, built once and reused by every round.
pub struct Preload {
    pub data: Preloaded,
    pub event_bodies: Vec<Bytes>,
    pub final_bodies: Vec<Bytes>,
}

/// producer-api (without and with the read cache) and an indexer over a topic and
/// index of their own, the index holding every city: P3..P6 run against them.
pub struct Live {
    pub names: Names,
    pub api: Service,
    pub cached_api: Service,
    pub indexer: Service,
}

pub struct Bench {
    pub args: Args,
    pub stack: Stack,
    pub http: reqwest::Client,
    pub engine_pid: Option<u32>,
    pub kafka_pid: Option<u32>,
    preloads: HashMap<Order, Preload>,
    /// P7's twin topics (Avro and the plugin's JSON), filled once per order.
    pub pull_twins: HashMap<Order, crate::pull_ingestion::Twins>,
    live: Option<Live>,
    /// P3's last accepted rate, for P5's write rate.
    post_rate: Option<f64>,
    /// Written to every index and topic name, so a run's leftovers are recognisable.
    run_id: Names,
    /// The Jaeger of `--tracing on`, killed with the bench.
    jaeger: Option<Jaeger>,
}

/// The OTLP endpoint of the Jaeger `--tracing on` starts (its default gRPC port).
const JAEGER_OTLP: &str = "http://127.0.0.1:4317";

struct Jaeger(std::process::Child);

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_jaeger() -> anyhow::Result<Jaeger> {
    let binary = std::env::var_os("CITYPOP_JAEGER").context(
        "--tracing on needs CITYPOP_JAEGER, a jaeger binary (`. deploy/tools.sh; install_jaeger`)",
    )?;
    let child = std::process::Command::new(&binary)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.to_string_lossy()))?;
    // Ready well within this; the services' exporter retries meanwhile anyway.
    std::thread::sleep(std::time::Duration::from_secs(3));
    Ok(Jaeger(child))
}

impl Bench {
    pub async fn new(args: Args) -> anyhow::Result<Self> {
        let stack = Stack::from_env();
        let http = crate::client();
        let engine_pid = engine_pid(&http, &stack.elasticsearch).await;
        let kafka_pid = kafka_pid(&args);
        if engine_pid.is_none() {
            eprintln!("warning: the engine's pid is unknown; its CPU is not reported");
        }
        if kafka_pid.is_none() {
            eprintln!(
                "warning: no live Kafka pid in {}/kafka/kafka.pid (--stack-dir); its CPU is not reported",
                args.stack_dir.display()
            );
        }
        let jaeger = match args.tracing {
            crate::Tracing::On => Some(start_jaeger()?),
            crate::Tracing::Off => None,
        };
        Ok(Self {
            args,
            stack,
            http,
            engine_pid,
            kafka_pid,
            preloads: HashMap::new(),
            pull_twins: HashMap::new(),
            live: None,
            post_rate: None,
            run_id: Names::unique("bench"),
            jaeger,
        })
    }

    /// Names for one round's index and consumer group over `topic`.
    pub fn names(&self, what: &str, topic: &str) -> Names {
        let unique = Names::unique(&format!("bench-{what}"));
        Names {
            topic: topic.to_owned(),
            alias: unique.alias,
            group: unique.group,
        }
    }

    /// The settings every indexer the bench starts is given.
    /// Runs `indexer setup` for `names`: its topics (if missing), index template, index
    /// and alias, with the bench's indexer settings, so the index has the shards an
    /// `--indexer-env` asks for: the indexer started after it keeps the index it
    /// finds, and the ceilings write to one set up alike.
    pub async fn setup(&self, names: &Names) {
        let mut settings = self.indexer_settings();
        settings.push(("CITYPOP_LOG", "warn".to_owned()));
        run_indexer_command(
            &self.stack,
            names,
            &["setup"],
            &settings,
            Duration::from_secs(120),
        )
        .await;
    }

    pub fn indexer_settings(&self) -> Vec<(&str, String)> {
        let mut settings = vec![
            (
                "CITYPOP_BULK_MAX_DOCUMENTS",
                self.args.bulk_size.to_string(),
            ),
            (
                "CITYPOP_BULK_CONCURRENCY",
                self.args.bulk_concurrency.to_string(),
            ),
            ("CITYPOP_COMMIT_INTERVAL", "200ms".to_owned()),
            ("CITYPOP_LOG", "warn".to_owned()),
        ];
        // Later entries win: a setting given on the command line replaces the above.
        settings.extend(
            self.args
                .indexer_env
                .iter()
                .map(|(name, value)| (name.as_str(), value.clone())),
        );
        settings
    }

    pub fn services_settings(&self) -> Value {
        let indexer: serde_json::Map<String, Value> = self
            .indexer_settings()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        json!({
            "indexer": indexer,
            "indexer_also": "CITYPOP_INDEX_REPLICAS=0 (one node)",
            "producer_api_cached": {"CITYPOP_READ_CACHE_TTL": self.args.read_cache_ttl},
            "producer_api_tracing": self.args.tracing,
        })
    }

    /// The topic preloaded in `order`, filled on first use.
    pub async fn preload(&mut self, order: Order) -> anyhow::Result<&Preload> {
        if !self.preloads.contains_key(&order) {
            let topic = format!("{}-{}", self.run_id.topic, order.name());
            eprintln!(
                "==> preload ({}): {} events over {} cities",
                order.name(),
                self.args.events,
                self.args.cities
            );
            let names = self.names("setup", &topic);
            self.setup(&names).await;
            delete_alias(&self.http, &self.stack.elasticsearch, &names.alias).await?;
            let data = crate::preload::preload(
                &self.stack.kafka,
                &topic,
                order,
                self.args.events,
                self.args.cities,
                self.args.seed,
            )
            .await?;
            eprintln!(
                "    {:.1} s; {} cities touched",
                data.seconds,
                data.final_documents.len()
            );
            let event_bodies = crate::ceiling::bulk_bodies(&data.events, self.args.bulk_size);
            let final_bodies =
                crate::ceiling::bulk_bodies(&data.final_documents, self.args.bulk_size);
            self.preloads.insert(
                order,
                Preload {
                    data,
                    event_bodies,
                    final_bodies,
                },
            );
        }
        self.preloads
            .get(&order)
            .context("the preload was just inserted")
    }

    /// A raw `_bulk` ceiling into a fresh index set up as the indexer's (same
    /// mappings and shards), deleted after: (operations/s, engine CPU µs per op).
    pub async fn ceiling(
        &self,
        topic: &str,
        bodies: &[Bytes],
        operations: usize,
    ) -> anyhow::Result<(f64, Option<f64>)> {
        let names = self.names("ceiling", topic);
        self.setup(&names).await;
        let meter = CpuMeter::start(&[self.engine_pid]);
        let seconds = crate::ceiling::raw_bulk(
            &self.http,
            &self.stack.elasticsearch,
            &names.alias,
            bodies,
            self.args.bulk_concurrency,
        )
        .await?;
        let cpu = meter.stop();
        delete_alias(&self.http, &self.stack.elasticsearch, &names.alias).await?;
        Ok((
            operations as f64 / seconds,
            cpu[0].map(|c| micros_per(c, operations)),
        ))
    }

    /// P3..P6's services, started on first use.
    pub async fn live(&mut self) -> anyhow::Result<&Live> {
        if self.live.is_none() {
            eprintln!(
                "==> live services: index of {} cities, indexer, producer-api (and one with the read cache)",
                self.args.cities
            );
            let names = Names::unique("bench-live");
            self.setup(&names).await;
            // One event per city, indexed by the indexer itself: the index must
            // agree with its topic (the indexer refuses an index ahead of it).
            crate::preload::preload(
                &self.stack.kafka,
                &names.topic,
                Order::RoundRobin,
                self.args.cities,
                self.args.cities,
                self.args.seed,
            )
            .await?;
            let indexer = spawn_indexer_with(
                &self.stack,
                &names,
                &self.indexer_settings(),
                Readiness::Ready,
            )
            .await;
            drain(self, &names, &indexer, self.args.cities).await?;
            let mut quiet = vec![("CITYPOP_LOG", "warn".to_owned())];
            if self.jaeger.is_some() {
                quiet.push(("CITYPOP_OTLP_ENDPOINT", JAEGER_OTLP.to_owned()));
            }
            let api = spawn_producer_api_with(&self.stack, &names, &quiet, Readiness::Ready).await;
            let mut cached = quiet.clone();
            cached.push(("CITYPOP_READ_CACHE_TTL", self.args.read_cache_ttl.clone()));
            let cached_api =
                spawn_producer_api_with(&self.stack, &names, &cached, Readiness::Ready).await;
            self.live = Some(Live {
                names,
                api,
                cached_api,
                indexer,
            });
        }
        self.live
            .as_ref()
            .context("the live services were just started")
    }

    /// Stops the live services and deletes what the run created.
    pub async fn cleanup(&mut self) {
        let kafka = Kafka::connect(&self.stack.kafka);
        if let Some(live) = self.live.take() {
            let alias = live.names.alias.clone();
            let topic = live.names.topic.clone();
            drop(live);
            let _ = delete_alias(&self.http, &self.stack.elasticsearch, &alias).await;
            kafka.delete_topic(&topic).await;
        }
        for preload in self.preloads.values() {
            kafka.delete_topic(&preload.data.topic).await;
        }
        for twins in std::mem::take(&mut self.pull_twins).into_values() {
            twins.delete(&self.stack).await;
        }
    }
}

/// Every round runs every selected measure in turn; the first round is discarded
/// when warming up.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut bench = Bench::new(args.clone()).await?;
    let versions = versions(&bench).await;
    let mut report = Report::new(serde_json::to_value(&args)?, versions);
    report.services = bench.services_settings();
    let rounds = args.repeat + usize::from(args.warmup);
    let mut outcome = Ok(());
    'rounds: for round in 0..rounds {
        let warmup = args.warmup && round == 0;
        eprintln!(
            "=== round {}/{rounds}{}",
            round + 1,
            if warmup { " (warm-up, discarded)" } else { "" }
        );
        for &measure in &args.measures {
            match crate::run_measure(&mut bench, measure).await {
                Ok(records) if !warmup => {
                    for r in records {
                        report.record(r.id, &r.measure, r.ceiling_name, r.target, r.sample);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    outcome = Err(e.context(format!("{measure:?}, round {}", round + 1)));
                    break 'rounds;
                }
            }
        }
        if !warmup {
            report.rounds += 1;
        }
    }
    bench.cleanup().await;
    outcome?;
    report.finish();
    let (markdown, json) = report.write(&args.out)?;
    println!("{}", std::fs::read_to_string(&markdown)?);
    eprintln!("results: {} and {}", markdown.display(), json.display());
    Ok(())
}

pub async fn p1(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for order in bench.args.order.clone() {
        let events = bench.args.events;
        let topic = bench.preload(order).await?.data.topic.clone();
        eprintln!("==> P1 ({}): indexer drains the topic", order.name());
        let names = bench.names("p1", &topic);
        bench.setup(&names).await;
        let indexer = spawn_indexer_with(
            &bench.stack,
            &names,
            &bench.indexer_settings(),
            Readiness::Ready,
        )
        .await;
        let (rate, cpu) = drain(bench, &names, &indexer, events).await?;
        let rss = crate::memory::peak_rss_bytes(indexer.pid());
        drop(indexer);
        let (http, engine_url) = (&bench.http, bench.stack.elasticsearch.as_str());
        let index =
            crate::pull_ingestion::only_index_behind(http, engine_url, &names.alias).await?;
        let shards = crate::pull_ingestion::primary_shards(http, engine_url, &index).await?;
        delete_alias(&bench.http, &bench.stack.elasticsearch, &names.alias).await?;
        let [engine, indexer_cpu] = [cpu[0], cpu[1]].map(|c| c.map(|c| micros_per(c, events)));
        let total = engine.zip(indexer_cpu).map(|(a, b)| a + b);

        let preload = bench.preload(order).await?;
        let (event_bodies, final_bodies, finals) = (
            preload.event_bodies.clone(),
            preload.final_bodies.clone(),
            preload.data.final_documents.len(),
        );
        let (fair, fair_cpu) = bench.ceiling(&topic, &event_bodies, events).await?;
        let (finals_rate, finals_cpu) = bench.ceiling(&topic, &final_bodies, finals).await?;
        eprintln!(
            "    {rate:.0} events/s; raw _bulk of every event {fair:.0}/s, of the {finals} final documents {finals_rate:.0}/s"
        );
        let sample = Sample::new(rate)
            .extra(CPU_ENGINE, engine)
            .extra(CPU_CITYPOP, indexer_cpu)
            .extra(CPU_TOTAL, total);
        records.push(
            Record::new(
                "P1",
                format!("indexer drain, {} (events/s)", order.name()),
                Target::RatioAtLeast(0.9),
                sample
                    .clone()
                    .ceiling(fair)
                    .extra(CPU_CEILING, fair_cpu)
                    .note(format!("index: {shards} shard(s), the ceiling's alike")),
            )
            .against("raw _bulk of every event (/s)"),
        );
        records.push(
            Record::new(
                "P1",
                format!("indexer drain, {}, vs final documents", order.name()),
                Target::None,
                sample
                    .ceiling(finals_rate)
                    .extra(CPU_CEILING, finals_cpu)
                    .note(format!(
                        "ceiling writes the {finals} final documents once each (docs/s); the CPU column is per document"
                    )),
            )
            .against("raw _bulk of the final documents (docs/s)"),
        );
        if bench.args.measures.contains(&crate::Measure::P6) {
            let measure = format!("indexer peak RSS, P1 drain {} (MiB)", order.name());
            records.push(rss_record(&measure, rss, 128.0));
        }
    }
    Ok(records)
}

pub async fn p2(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for order in bench.args.order.clone() {
        let events = bench.args.events;
        let preload = bench.preload(order).await?;
        let (topic, event_bodies) = (preload.data.topic.clone(), preload.event_bodies.clone());
        eprintln!("==> P2 ({}): indexer replay of the topic", order.name());
        let names = bench.names("p2", &topic);
        bench.setup(&names).await;
        let mut command = indexer_command_builder(
            &bench.stack,
            &names,
            &["replay", "--json", "--delete-old"],
            &bench.indexer_settings(),
        );
        let mut child = command.spawn().context("spawning indexer replay")?;
        let pid = child.id();
        let meter = CpuMeter::start(&[bench.engine_pid, pid]);
        // Sampled until it exits: a reaped process's CPU time cannot be read.
        let mut cpu = meter.stop();
        let stdout = child.stdout.take();
        let reader = tokio::spawn(async move {
            let mut out = String::new();
            if let Some(mut stdout) = stdout {
                use tokio::io::AsyncReadExt;
                let _ = stdout.read_to_string(&mut out).await;
            }
            out
        });
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            let now = meter.stop();
            cpu[1] = now[1].or(cpu[1]);
            cpu[0] = now[0];
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let output = reader.await.unwrap_or_default();
        anyhow::ensure!(
            status.success(),
            "indexer replay failed ({status}): {output}"
        );
        let summary: Value =
            serde_json::from_str(&output).with_context(|| format!("replay summary: {output}"))?;
        let rate = summary["events_per_second"].as_f64().unwrap_or_default();
        delete_alias(&bench.http, &bench.stack.elasticsearch, &names.alias).await?;
        let (fair, fair_cpu) = bench.ceiling(&topic, &event_bodies, events).await?;
        eprintln!("    {rate:.0} events/s; raw _bulk of every event {fair:.0}/s");
        let [engine, indexer_cpu] = [cpu[0], cpu[1]].map(|c| c.map(|c| micros_per(c, events)));
        records.push(
            Record::new(
                "P2",
                format!("replay, {} (events/s)", order.name()),
                Target::RatioAtLeast(0.9),
                Sample::new(rate)
                    .ceiling(fair)
                    .extra(CPU_ENGINE, engine)
                    .extra(CPU_CITYPOP, indexer_cpu)
                    .extra(CPU_TOTAL, engine.zip(indexer_cpu).map(|(a, b)| a + b))
                    .extra(CPU_CEILING, fair_cpu),
            )
            .against("raw _bulk of every event (/s)"),
        );
    }
    Ok(records)
}

pub async fn p3(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    let (concurrency, duration, cities) = (
        bench.args.concurrency,
        bench.args.duration,
        bench.args.cities,
    );
    let (engine_pid, kafka_pid) = (bench.engine_pid, bench.kafka_pid);
    let live = bench.live().await?;
    eprintln!("==> P3: POST /city at concurrency {concurrency}");
    let meter = CpuMeter::start(&[Some(live.api.pid()), kafka_pid]);
    let posts = crate::api::post(&live.api.base_url, cities, concurrency, duration).await;
    let post_cpu = meter.stop();
    let direct = format!("{}-direct", live.names.alias);
    let meter = CpuMeter::start(&[engine_pid]);
    let puts = crate::ceiling::direct_put(
        &bench.stack.elasticsearch,
        &direct,
        cities,
        concurrency,
        duration,
    )
    .await;
    let put_cpu = meter.stop();
    let _ = bench
        .http
        .delete(format!("{}/{direct}", bench.stack.elasticsearch))
        .send()
        .await;
    eprintln!(
        "    POST {:.0}/s (p50 {:.1} ms, p99 {:.1} ms); direct PUT _doc {:.0}/s",
        posts.per_second, posts.p50_ms, posts.p99_ms, puts.per_second
    );
    bench.post_rate = Some(posts.per_second);
    let accepted = posts.ok as usize;
    let api_cpu = post_cpu[0].map(|c| micros_per(c, accepted));
    let kafka_cpu = post_cpu[1].map(|c| micros_per(c, accepted));
    Ok(vec![
        Record::new(
            "P3",
            "POST /city accepted (/s)",
            Target::RatioAtLeast(2.0),
            Sample::new(posts.per_second)
                .ceiling(puts.per_second)
                .extra(CPU_CITYPOP, api_cpu.zip(kafka_cpu).map(|(a, b)| a + b))
                .extra(CPU_CEILING, put_cpu[0].map(|c| micros_per(c, puts.ok as usize)))
                .note(format!(
                    "p50 {:.1} ms, p99 {:.1} ms (engine: p50 {:.1} ms, p99 {:.1} ms); citypop CPU = producer-api {} + Kafka {} µs/write",
                    posts.p50_ms,
                    posts.p99_ms,
                    puts.p50_ms,
                    puts.p99_ms,
                    api_cpu.map_or("?".into(), |c| format!("{c:.1}")),
                    kafka_cpu.map_or("?".into(), |c| format!("{c:.1}")),
                )),
        )
        .against("engine PUT _doc (/s)"),
    ])
}

pub async fn p4(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    let (concurrency, duration, cities) = (
        bench.args.concurrency,
        bench.args.duration,
        bench.args.cities,
    );
    let (engine_pid, engine) = (bench.engine_pid, bench.stack.elasticsearch.clone());
    let ttl = bench.args.read_cache_ttl.clone();
    let live = bench.live().await?;
    eprintln!("==> P4: GET /city/{{name}} at concurrency {concurrency}");
    let read = |api: &Service| {
        let (url, pid) = (api.base_url.clone(), api.pid());
        async move {
            let meter = CpuMeter::start(&[Some(pid), engine_pid]);
            let result = crate::api::get(&url, cities, concurrency, duration).await;
            (result, meter.stop())
        }
    };
    let (gets, gets_cpu) = read(&live.api).await;
    let meter = CpuMeter::start(&[engine_pid]);
    let direct =
        crate::ceiling::direct_get(&engine, &live.names.alias, cities, concurrency, duration).await;
    let direct_cpu = meter.stop()[0].map(|c| micros_per(c, direct.ok as usize));
    let (cached, cached_cpu) = read(&live.cached_api).await;
    eprintln!(
        "    GET {:.0}/s, with the read cache {:.0}/s; direct GET {:.0}/s",
        gets.per_second, cached.per_second, direct.per_second
    );
    let row = |result: &crate::load::LoadResult, cpu: &[Option<Duration>]| {
        let reads = result.ok as usize;
        let api = cpu[0].map(|c| micros_per(c, reads));
        let engine = cpu[1].map(|c| micros_per(c, reads));
        Sample::new(result.per_second)
            .ceiling(direct.per_second)
            .extra(CPU_ENGINE, engine)
            .extra(CPU_CITYPOP, api)
            .extra(CPU_TOTAL, api.zip(engine).map(|(a, b)| a + b))
            .extra(CPU_CEILING, direct_cpu)
            .note(format!(
                "p50 {:.1} ms, p99 {:.1} ms (engine: p50 {:.1} ms, p99 {:.1} ms)",
                result.p50_ms, result.p99_ms, direct.p50_ms, direct.p99_ms
            ))
    };
    Ok(vec![
        Record::new(
            "P4",
            "GET /city/{name} (/s)",
            Target::RatioAtLeast(1.0),
            row(&gets, &gets_cpu),
        )
        .against("engine GET by id (/s)"),
        Record::new(
            "P4",
            format!("GET /city/{{name}}, read cache TTL {ttl} (/s)"),
            Target::None,
            row(&cached, &cached_cpu),
        )
        .against("engine GET by id (/s)"),
    ])
}

pub async fn p5(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    let (concurrency, duration, cities) = (
        bench.args.concurrency,
        bench.args.duration,
        bench.args.cities,
    );
    let known_rate = bench.post_rate;
    let live = bench.live().await?;
    let post_rate = match known_rate {
        Some(rate) => rate,
        None => {
            eprintln!("==> P5: POST rate, without P3");
            let probe = Duration::from_secs(2).min(duration);
            crate::api::post(&live.api.base_url, cities, concurrency, probe)
                .await
                .per_second
        }
    };
    let rate = post_rate / 2.0;
    eprintln!("==> P5: freshness at {rate:.0} writes/s");
    let fresh = crate::api::freshness(&live.api.base_url, cities, rate, duration).await;
    eprintln!(
        "    p50 {:.1} ms, p99 {:.1} ms over {} samples ({} missed)",
        fresh.p50_ms, fresh.p99_ms, fresh.samples, fresh.missed
    );
    Ok(vec![Record::new(
        "P5",
        "freshness p99, 202 to visible (ms)",
        Target::AtMost(crate::api::FRESHNESS_TARGET.as_secs_f64() * 1000.0),
        Sample::new(fresh.p99_ms).note(format!(
            "p50 {:.1} ms, {} samples at {:.0} writes/s, {} missed",
            fresh.p50_ms, fresh.samples, fresh.rate_per_second, fresh.missed
        )),
    )])
}

pub async fn p6(bench: &mut Bench) -> anyhow::Result<Vec<Record>> {
    let live = bench.live().await?;
    let api = crate::memory::peak_rss_bytes(live.api.pid());
    let indexer = crate::memory::peak_rss_bytes(live.indexer.pid());
    eprintln!(
        "==> P6: peak RSS producer-api {:.1} MiB, live indexer {:.1} MiB",
        mib(api),
        mib(indexer)
    );
    Ok(vec![
        rss_record("producer-api peak RSS (MiB)", api, 64.0),
        rss_record("indexer peak RSS, live (MiB)", indexer, 128.0),
    ])
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.unwrap_or_default() as f64 / (1024.0 * 1024.0)
}

fn rss_record(measure: &str, bytes: Option<u64>, limit: f64) -> Record {
    Record::new(
        "P6",
        measure,
        Target::AtMost(limit),
        Sample::new(mib(bytes)),
    )
}

/// Deletes the indices behind `alias` and the index template `indexer setup` named
/// after it, so the next round starts from an empty engine.
pub async fn delete_alias(http: &reqwest::Client, engine: &str, alias: &str) -> anyhow::Result<()> {
    let template = http
        .delete(format!("{engine}/_index_template/{alias}"))
        .send()
        .await?;
    anyhow::ensure!(
        template.status().is_success() || template.status() == 404,
        "deleting index template {alias}: {}",
        template.status()
    );
    let response = http.get(format!("{engine}/_alias/{alias}")).send().await?;
    if response.status() == 404 {
        return Ok(());
    }
    let indices: serde_json::Map<String, Value> = response.error_for_status()?.json().await?;
    for index in indices.keys() {
        http.delete(format!("{engine}/{index}"))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// Events per second from the indexer's first consumed event until its group has
/// committed the whole topic, and the CPU time of the engine and the indexer over
/// that span.
pub async fn drain(
    bench: &Bench,
    names: &Names,
    indexer: &Service,
    events: usize,
) -> anyhow::Result<(f64, Vec<Option<Duration>>)> {
    let target = DrainTarget::new(&Kafka::connect(&bench.stack.kafka), names);
    let mut progress = target.progress();
    let mut meter = CpuMeter::start(&[bench.engine_pid, Some(indexer.pid())]);
    let started = loop {
        if indexer
            .metric("citypop_indexer_events_consumed_total")
            .await
            > 0.0
        {
            break Instant::now();
        }
        // Nothing consumed is nothing committed: an indexer that never starts
        // reading is a stalled drain too.
        progress.observe(BTreeMap::new(), Instant::now())?;
        meter = CpuMeter::start(&[bench.engine_pid, Some(indexer.pid())]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    target
        .until_committed(&mut progress, started, Duration::from_secs(3600))
        .await?;
    let cpu = meter.stop();
    Ok((events as f64 / started.elapsed().as_secs_f64(), cpu))
}

/// What an indexer's drain of a topic must commit (the end offsets of the
/// partitions that hold events), and a reader of what its group has committed.
pub struct DrainTarget {
    ends: BTreeMap<i32, i64>,
    // One client for every poll. Two new clients per poll (10 polls a second) took
    // 3% of this 2-core machine (Kafka 0.04 of a core, the bench 0.02) during the
    // indexer's drains only, leaving the indexer and its engine less to run on.
    committed: CommittedOffsets,
}

impl DrainTarget {
    pub fn new(kafka: &Kafka, names: &Names) -> Self {
        let ends: BTreeMap<i32, i64> = kafka
            .end_offsets(&names.topic)
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .collect();
        let committed = kafka.committed_offsets(&names.group, &names.topic, ends.keys().copied());
        Self { ends, committed }
    }

    /// A stall watch over this drain, from now.
    pub fn progress(&self) -> CommitProgress {
        CommitProgress::new(self.ends.clone(), Instant::now())
    }

    /// Polls until the group has committed every end offset; fails once `progress`
    /// sees the drain stop moving, or `timeout` after `since`.
    pub async fn until_committed(
        &self,
        progress: &mut CommitProgress,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        loop {
            let committed = self.committed.read();
            if committed == self.ends {
                return Ok(());
            }
            progress.observe(committed, Instant::now())?;
            anyhow::ensure!(
                since.elapsed() < timeout,
                "the indexer did not drain the topic within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The pid of the engine node answering at `engine`, from its own nodes API.
async fn engine_pid(http: &reqwest::Client, engine: &str) -> Option<u32> {
    let nodes: Value = http
        .get(format!(
            "{engine}/_nodes/_local/process?filter_path=nodes.*.process.id"
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let id = nodes["nodes"].as_object()?.values().next()?["process"]["id"].as_u64()?;
    u32::try_from(id).ok()
}

/// The Kafka broker's pid, from the stack's pid file, if that process runs.
fn kafka_pid(args: &Args) -> Option<u32> {
    let file = args.stack_dir.join("kafka").join("kafka.pid");
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// Engine name and version, Kafka version, citypop's git commit.
async fn versions(bench: &Bench) -> Value {
    let get = |path: &str| {
        let url = format!("{}{path}", bench.stack.elasticsearch);
        async move {
            let response = bench.http.get(url).send().await.ok()?;
            response.error_for_status().ok()?.json::<Value>().await.ok()
        }
    };
    // Elasticsearch's zip distribution answers 405 to `GET /` (the handler is in a
    // module it does not ship); its nodes API has the version too.
    let (engine, engine_version) = match get("/").await {
        Some(root) => (
            root["version"]["distribution"]
                .as_str()
                .unwrap_or("elasticsearch")
                .to_owned(),
            root["version"]["number"].as_str().unwrap_or("?").to_owned(),
        ),
        None => {
            let nodes = get("/_nodes/_local?filter_path=nodes.*.version,nodes.*.build_flavor")
                .await
                .unwrap_or_default();
            let node = nodes["nodes"]
                .as_object()
                .and_then(|n| n.values().next().cloned())
                .unwrap_or_default();
            let name = if node.get("build_flavor").is_some() {
                "elasticsearch"
            } else {
                "engine"
            };
            (
                name.to_owned(),
                node["version"].as_str().unwrap_or("?").to_owned(),
            )
        }
    };
    let kafka = bench
        .kafka_pid
        .and_then(kafka_version)
        .unwrap_or_else(|| "?".into());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    json!({
        "engine": engine, "engine_version": engine_version, "kafka_version": kafka,
        "git_commit": commit, "git_dirty": dirty,
        "summary": format!(
            "{engine} {engine_version}, Kafka {kafka}, citypop {}{}",
            &commit[..commit.len().min(12)],
            if dirty == Some(true) { " (dirty)" } else { "" }
        ),
    })
}

/// Kafka's version, from the `kafka-clients-<version>.jar` on the broker's class
/// path (a directory given as `-cp <dir>/*`).
fn kafka_version(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let classpath = args.iter().skip_while(|a| *a != "-cp").nth(1)?;
    classpath.split(':').find_map(|entry| {
        let dir = entry.strip_suffix("/*").unwrap_or(entry);
        std::fs::read_dir(dir).ok()?.find_map(|file| {
            let name = file.ok()?.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("kafka-clients-")?
                    .strip_suffix(".jar")?
                    .to_owned(),
            )
        })
    })
}
