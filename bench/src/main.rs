//! `citypop-bench`: measures citypop on the local stack against the engine's own
//! ceilings and writes a markdown table and a JSON file.
//!
//! Each measure (P1..P6) is a self-contained unit, run once per round; a round runs
//! every selected measure, each next to its own ceiling, so that what moves the
//! machine moves both. `--repeat` rounds are summarised as median and spread.
//!
//! - P1 indexer drain of a preloaded topic vs a raw `_bulk` loader writing the same
//!   events (fair ceiling), and vs one writing only the final documents.
//! - P2 `indexer replay` of the same topic vs the fair ceiling.
//! - P3 `POST /city` vs direct single-document engine writes, same concurrency.
//! - P4 `GET /city/{name}` (without and with the read cache) vs direct engine GET
//!   by id, same concurrency.
//! - P5 freshness, 202 to visible, at half the measured POST rate.
//! - P6 peak RSS of producer-api and the indexer.
//! - P7 (OpenSearch 3 only) the indexer vs the engine's own pull-based ingestion of
//!   the same events, one drain of each per round: events/s and CPU per event of
//!   the engine and the indexer.
//!
//! Ratios and CPU per operation, not absolute rates, are the results: shared
//! machines vary.

mod api;
mod ceiling;
mod cpu;
mod load;
mod measures;
mod memory;
mod preload;
mod pull_ingestion;
mod report;
mod stall;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser, ValueEnum};
use serde::Serialize;

use crate::preload::Order;

/// A measure, selected with `--measures`. Adding one: a variant here, its function
/// in `measures.rs`, and an arm in `run_measure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tracing {
    Off,
    On,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[value(rename_all = "UPPER")]
pub enum Measure {
    /// Indexer drain of the preloaded topic vs the raw `_bulk` ceilings.
    P1,
    /// `indexer replay` of the preloaded topic vs the fair ceiling.
    P2,
    /// `POST /city` vs the engine's `PUT _doc`.
    P3,
    /// `GET /city/{name}`, without and with the read cache, vs the engine's GET.
    P4,
    /// Freshness: 202 to visible, at half the POST rate.
    P5,
    /// Peak RSS of producer-api and the indexer.
    P6,
    /// The indexer vs OpenSearch 3's pull-based ingestion of the same events (needs
    /// the stack's CITYPOP_OPENSEARCH_PULL_INGESTION=on; fails and says so without).
    P7,
}

/// Benchmarks citypop against the engine's own ceilings on the local stack
/// (`KAFKA_BOOTSTRAP_SERVERS`, `ELASTICSEARCH_URL`).
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "citypop-bench", version)]
pub struct Args {
    /// Measures to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "P1,P2,P3,P4,P5,P6")]
    measures: Vec<Measure>,
    /// Rounds of every measure (each next to its ceiling); results are their
    /// median and spread (min–max).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// A discarded first round, so a cold engine does not count (`--warmup false`
    /// to skip it).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    warmup: bool,
    /// Events preloaded into the topic for P1 and P2, per order.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Cities the events are spread over.
    #[arg(long, default_value_t = 100_000)]
    cities: usize,
    /// Key orders of the preload, comma-separated; P1 and P2 run once per order,
    /// the ceilings write the same events in the same order.
    #[arg(long, value_delimiter = ',', default_value = "round-robin,zipf")]
    order: Vec<Order>,
    /// Seed of the random and zipf orders (the HTTP loads pick cities at random).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests in flight for P3 and P4.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of each HTTP load (P3, P4, P5).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "as_secs")]
    duration: Duration,
    /// Documents per bulk request, for the indexer and the raw loaders alike.
    #[arg(long, default_value_t = 5000)]
    bulk_size: usize,
    /// Bulk requests in flight, for the indexer (`CITYPOP_BULK_CONCURRENCY`) and the
    /// raw loaders alike; 2 is the indexer's default.
    #[arg(long, default_value_t = 2)]
    bulk_concurrency: usize,
    /// Read cache TTL of P4's second producer-api (`CITYPOP_READ_CACHE_TTL`).
    #[arg(long, default_value = "1s")]
    read_cache_ttl: String,
    /// A further setting for every indexer the bench starts, and for the `indexer
    /// setup` that creates each measure's index and its ceiling's, as `NAME=value`
    /// (e.g. `CITYPOP_INDEX_SHARDS=6`); repeatable. For trying a setting before
    /// changing its default; the results record it with the others.
    #[arg(long = "indexer-env", value_name = "NAME=value", value_parser = parse_setting)]
    indexer_env: Vec<(String, String)>,
    /// `on`: the live producer-api services export traces to a Jaeger the bench starts
    /// from `CITYPOP_JAEGER` (on its default ports, 4317 and 16686), at the default
    /// sampling ratio; to measure what tracing costs P3 and P4 against `off`.
    #[arg(long, value_enum, default_value_t = Tracing::Off)]
    tracing: Tracing,
    /// The stack's directory, for the Kafka broker's pid file (its CPU time);
    /// `CITYPOP_STACK_DIR` or `.stack`.
    #[arg(long, env = "CITYPOP_STACK_DIR", default_value = ".stack")]
    stack_dir: PathBuf,
    /// Where the service binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where results are written (`latest.*` and a timestamped copy).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// A small, quick run that keeps every code path working (CI): 5,000 events over
    /// 500 cities, concurrency 8, 2 s loads, one round, no warm-up. Its numbers mean
    /// little.
    #[arg(long)]
    smoke: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=value, got {text:?}")),
    }
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.events = 5_000;
        args.cities = 500;
        args.concurrency = 8;
        args.duration = Duration::from_secs(2);
        args.repeat = 1;
        args.warmup = false;
    }
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let bin_dir = args
        .bin_dir
        .canonicalize()
        .with_context(|| format!("{} (build the services first)", args.bin_dir.display()))?;
    // SAFETY: no other thread exists yet; the runtime is built below.
    unsafe { std::env::set_var("CITYPOP_BIN_DIR", &bin_dir) };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measures::run(args))
}

/// One round of `measure`: its figures, each next to its own ceiling. Adding a
/// measure: a variant of `Measure`, its function in `measures.rs`, an arm here.
async fn run_measure(
    bench: &mut measures::Bench,
    measure: Measure,
) -> anyhow::Result<Vec<measures::Record>> {
    match measure {
        Measure::P1 => measures::p1(bench).await,
        Measure::P2 => measures::p2(bench).await,
        Measure::P3 => measures::p3(bench).await,
        Measure::P4 => measures::p4(bench).await,
        Measure::P5 => measures::p5(bench).await,
        Measure::P6 => measures::p6(bench).await,
        Measure::P7 => pull_ingestion::p7(bench).await,
    }
}

/// The benchmark's HTTP client. It asks for uncompressed answers, as citypop's
/// engine client does: on one machine, compression is only CPU taken from the
/// engine, and a ceiling that pays for it would flatter citypop.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("a client with default TLS settings builds")
}
