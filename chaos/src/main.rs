//! `citypop-chaos`: the chaos soak. A steady workload of writes, bulk writes and
//! deletes over a Zipf choice of cities runs through two producer-api processes
//! while a seeded schedule of faults hits the indexers, the engine path, the
//! brokers and the engine nodes, and injects poison. At the end, once the indexers
//! caught up, it checks that the index is exactly the fold of every accepted write,
//! that reads never went back, that the dead letters are the poison, and that
//! memory stayed within its targets. Exit code 1 when any check fails.

mod checks;
mod cluster;
mod faults;
mod report;
mod schedule;
mod topic;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use citypop_tests::{Names, Readiness, Stack, spawn_producer_api_with};
use clap::Parser;
use tokio::sync::watch;

use crate::checks::Check;
use crate::cluster::Cluster;
use crate::faults::{Services, Settings};
use crate::schedule::Targets;

/// The chaos soak: a seeded fault schedule over a steady load, then checks that the
/// index is the fold of every accepted write. Endpoints come from
/// KAFKA_BOOTSTRAP_SERVERS, ELASTICSEARCH_URL and (on the cluster) ELASTICSEARCH_URLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// How long the load runs; faults happen within its first 85%
    #[arg(long, env = "CHAOS_DURATION", default_value = "20m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the workload [default: drawn from the clock and printed]
    #[arg(long, env = "CHAOS_SEED")]
    seed: Option<u64>,
    /// Cities the writers choose from (Zipf, s = 1.1)
    #[arg(long, default_value_t = 3000)]
    cities: usize,
    /// Write requests a second, over all writers (a bulk request counts once)
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Concurrent writers, spread over the producer-api processes
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// producer-api processes
    #[arg(long, default_value_t = 2)]
    apis: usize,
    /// Indexers of the consumer group (one more joins and leaves as a fault)
    #[arg(long, default_value_t = 3)]
    indexers: usize,
    /// Cities the reader follows
    #[arg(long, default_value_t = 40)]
    reader_sample: usize,
    /// The cluster script whose verbs kill brokers and stop engine nodes
    /// (deploy/local/cluster.sh); without it those faults are reported as not run
    #[arg(long, env = "CHAOS_CLUSTER_SCRIPT")]
    cluster_script: Option<PathBuf>,
    /// Where the service binaries are
    #[arg(long, default_value = "target/debug")]
    bin_dir: PathBuf,
    /// Where the report goes (`chaos-<time>.md` and `.json`, and `chaos-latest.*`)
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// How long the indexers get to catch up once the load stopped
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    catch_up: Duration,
    /// Peak RSS target of producer-api, MiB (README, Performance: P6)
    #[arg(long, default_value_t = 64.0)]
    producer_api_rss_mib: f64,
    /// Peak RSS target of an indexer, MiB (README, Performance: P6)
    #[arg(long, default_value_t = 128.0)]
    indexer_rss_mib: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let bin_dir = std::fs::canonicalize(&args.bin_dir)
        .with_context(|| format!("the binaries' directory {}", args.bin_dir.display()))?;
    // SAFETY: set once here, before any other thread exists that could read the
    // environment (the runtime's workers read no variables).
    unsafe { std::env::set_var("CITYPOP_BIN_DIR", &bin_dir) };
    let stack = Stack::from_env();
    let engine_urls: Vec<String> = std::env::var("ELASTICSEARCH_URLS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|_| vec![stack.elasticsearch.clone()]);
    let brokers = stack.kafka.split(',').count();
    let cluster = Cluster::new(args.cluster_script.clone());
    if args.cluster_script.is_some() && (brokers < 3 || engine_urls.len() < 2) {
        bail!(
            "the cluster script is set but the endpoints are a single node's: export the cluster's (deploy/local/cluster.sh env)"
        );
    }
    let targets = Targets {
        indexers: args.indexers,
        brokers: 3,
        engine_nodes: 2,
    };
    let plan = schedule::plan(seed, args.duration, targets);
    println!(
        "chaos: seed {seed}, {} of load, {} faults, {} ({} brokers, {} engine nodes)",
        humantime::format_duration(args.duration),
        plan.len(),
        if cluster.is_multi_node() {
            "on the cluster"
        } else {
            "on the single-node stack: broker and engine-node faults will not run"
        },
        brokers,
        engine_urls.len()
    );
    for p in &plan {
        println!("  at {:>8.1} s: {}", p.at_ms as f64 / 1000.0, p.fault);
    }

    let names = Names::unique("chaos");
    let schema_dir =
        std::env::temp_dir().join(format!("citypop-chaos-schemas-{seed}-{}", names.topic));
    std::fs::create_dir_all(&schema_dir).context("creating the schema directory")?;
    // No CITYPOP_GROUP_INSTANCE_ID: static membership stays off, so a restarted or
    // added indexer is a rebalance.
    let mut indexer_env = vec![("CITYPOP_SCHEMA_DIR", schema_dir.display().to_string())];
    if cluster.is_multi_node() {
        indexer_env.push(("CITYPOP_INDEX_REPLICAS", "1".into()));
        indexer_env.push(("CITYPOP_TOPIC_REPLICATION_FACTOR", "3".into()));
    }
    let settings = Settings {
        kafka: stack.kafka.clone(),
        engine_urls: engine_urls.clone(),
        names: names.clone(),
        indexer_env,
        schema_dir,
        indexer_rss_target_mib: args.indexer_rss_mib,
    };
    println!(
        "chaos: topic and alias {}; starting {} indexers",
        names.topic, args.indexers
    );
    let mut services = Services::start(settings, cluster, args.indexers).await;
    let mut apis = Vec::new();
    for i in 0..args.apis {
        let api_stack = Stack {
            kafka: stack.kafka.clone(),
            elasticsearch: engine_urls[i % engine_urls.len()].clone(),
        };
        apis.push(spawn_producer_api_with(&api_stack, &names, &[], Readiness::Ready).await);
    }
    let api_urls = Arc::new(apis.iter().map(|a| a.base_url.clone()).collect::<Vec<_>>());

    // The load and the faults share one clock.
    let start = Instant::now();
    services.start = start;
    let services = Arc::new(services);
    let load = workload::Settings {
        cities: args.cities,
        rate: args.rate,
        clients: args.clients,
        reader_sample: args.reader_sample,
    };
    let (stop, stopped) = watch::channel(false);
    let writers: Vec<_> = (0..args.clients)
        .map(|c| {
            let api = (c % api_urls.len(), api_urls[c % api_urls.len()].clone());
            tokio::spawn(workload::writer(
                c,
                api,
                load.clone(),
                seed,
                start,
                stopped.clone(),
            ))
        })
        .collect();
    let reader = tokio::spawn(workload::reader(
        api_urls.clone(),
        workload::reader_sample(&load, seed),
        start,
        stopped.clone(),
    ));
    let fault_tasks: Vec<_> = plan
        .iter()
        .cloned()
        .map(|p| tokio::spawn(services.clone().run(p)))
        .collect();

    tokio::time::sleep(args.duration).await;
    println!(
        "chaos: load stops after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    stop.send_replace(true);
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.context("a writer")??);
    }
    let reads = reader.await.context("the reader")??;
    let mut run_errors = Vec::new();
    for task in fault_tasks {
        if let Err(e) = task.await {
            run_errors.push(format!("a fault task failed: {e}"));
        }
    }
    println!("chaos: every fault is over; waiting for the indexers to catch up");
    if let Err(e) = wait_for_catch_up(&stack.kafka, &names, args.catch_up).await {
        run_errors.push(format!("{e:#}"));
    }

    let kafka = stack.kafka.clone();
    let topic = names.topic.clone();
    let fold = tokio::task::spawn_blocking(move || topic::fold(&kafka, &topic)).await??;
    let kafka = stack.kafka.clone();
    let dlq = format!("{}.dlq", names.topic);
    let letters = tokio::task::spawn_blocking(move || topic::dead_letters(&kafka, &dlq)).await??;
    let documents = citypop_tests::engine::documents(&engine_urls[0], &names.alias).await;

    for (i, api) in apis.into_iter().enumerate() {
        services.record_rss(format!("producer-api {i}"), &api, args.producer_api_rss_mib);
        api.terminate().await;
    }
    services.stop_indexers().await;

    let poison = services
        .poison
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let rss = services
        .rss
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let admin = services
        .admin
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let redriven = *services.redriven.lock().unwrap_or_else(|e| e.into_inner());
    let schema_poison = poison.iter().filter(|p| p.reason == "schema").count();
    let mut executed = services
        .executed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    executed.sort_by_key(|e| e.started_ms);
    for e in executed.iter().filter(|e| e.outcome.starts_with("error")) {
        run_errors.push(format!(
            "fault at {} ms, {}: {}",
            e.started_ms, e.fault, e.outcome
        ));
    }
    let checks: Vec<Check> = vec![
        checks::accepted_writes_are_in_the_topic(&writes, &fold),
        checks::index_is_the_fold(&writes, &fold, &documents),
        checks::refusals_are_503(&writes),
        checks::reads_never_go_back(&reads, &fold),
        checks::dead_letters_are_the_poison(
            &names.topic,
            &poison,
            &letters,
            services.crashed.load(Ordering::SeqCst),
        ),
        checks::memory_within_targets(&rss),
        checks::admin_commands(&admin, redriven.map(|r| (r, schema_poison))),
    ];
    let report = report::Report {
        seed,
        duration_s: args.duration.as_secs_f64(),
        on_cluster: services.cluster.is_multi_node(),
        settings: serde_json::json!({
            "cities": args.cities, "rate": args.rate, "clients": args.clients,
            "apis": args.apis, "indexers": args.indexers, "reader_sample": args.reader_sample,
            "bin_dir": bin_dir, "kafka": stack.kafka, "engines": engine_urls,
            "topic": names.topic, "indexers_started": services.indexers_started(),
        }),
        planned: plan,
        executed,
        checks,
        run_errors,
        rss,
        poison,
        writes: writes.len(),
        reads: reads.len(),
    };
    let (markdown, json) = report.write(&args.out)?;
    print!("{}", report.summary());
    println!(
        "chaos: report in {} and {}",
        markdown.display(),
        json.display()
    );
    if !report.passed() {
        eprintln!("chaos: FAILED (seed {seed}); the fault schedule as it ran:");
        for e in &report.executed {
            eprintln!(
                "  {:>8.1} s to {:>8.1} s: {} ({})",
                e.started_ms as f64 / 1000.0,
                e.ended_ms as f64 / 1000.0,
                e.fault,
                e.outcome
            );
        }
        std::process::exit(1);
    }
    Ok(())
}

/// Waits until the indexers' group has committed every partition to its end: then
/// everything produced is indexed, stale or dead-lettered.
async fn wait_for_catch_up(kafka: &str, names: &Names, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (kafka_, group, topic) = (kafka.to_owned(), names.group.clone(), names.topic.clone());
        let (ends, committed) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((
                topic::end_offsets(&kafka_, &topic)?,
                topic::committed(&kafka_, &group, &topic)?,
            ))
        })
        .await??;
        let behind: Vec<String> = ends
            .iter()
            .filter(|(p, end)| **end > 0 && committed.get(p).copied().unwrap_or(0) < **end)
            .map(|(p, end)| format!("{p}: {} of {end}", committed.get(p).copied().unwrap_or(0)))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the indexers did not catch up within {timeout:?}: {}",
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
