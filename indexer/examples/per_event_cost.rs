//! The indexer's own CPU per event, without Kafka or an engine: N Avro events go
//! through the real batch (decode, coalesce), the real bulk body building and the
//! real bulk response parsing, and the batch's freeing; only the network is left out. Two numbers come out:
//! wall-clock µs per event, and, run under callgrind, instructions per event:
//!
//! ```sh
//! cargo build --release -p citypop-indexer --example per_event_cost
//! valgrind --tool=callgrind --toggle-collect='per_event_cost::measured_*' \
//!     target/release/examples/per_event_cost 100000
//! ```
//!
//! Ir of the toggled functions (callgrind's "Collected" total) divided by the
//! event count is the figure in README's "Indexer per-event cost". Building the
//! messages and the engine's canned answers is outside the toggled functions.
//!
//! Arguments: events (default 200000), cities (default 100000; round-robin keys).

use std::hint::black_box;
use std::time::{Duration, Instant};

use citypop_indexer::batch::Batch;
use citypop_indexer::bulk::{ItemAttempt, encode, parse_response};
use citypop_indexer::coalesce::Newest;
use citypop_indexer::decode::Write;
use citypop_schemas::CityKey;
use citypop_schemas::event::{CityPopulationUpdated, Codec};
use rdkafka::Timestamp;
use rdkafka::message::OwnedMessage;

/// The indexer binary's allocator, so its cost is the one measured.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The indexer's defaults: `--batch-max-events`, `--bulk-max-documents`.
const BATCH_EVENTS: usize = 10_000;
const BULK_DOCUMENTS: usize = 5_000;
const PARTITIONS: i32 = 12;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let cities: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let codec = Codec::new();
    let messages = messages(&codec, events, cities)?;

    let mut spent = Duration::ZERO;
    let mut documents = 0usize;
    let mut body_bytes = 0usize;
    let mut pending = messages.into_iter().peekable();
    // As the fetcher does: room for as many cities as the batch before had.
    let mut cities_before = 0;
    while pending.peek().is_some() {
        let chunk: Vec<OwnedMessage> = pending.by_ref().take(BATCH_EVENTS).collect();
        let start = Instant::now();
        let batch = measured_batch(&codec, chunk, cities_before);
        cities_before = batch.newest.len();
        spent += start.elapsed();
        let survivors: Vec<&Newest> = batch.newest.entries().collect();
        for request in survivors.chunks(BULK_DOCUMENTS) {
            let answer = answer(request.len());
            let start = Instant::now();
            let (n, bytes) = measured_request(request, &answer);
            spent += start.elapsed();
            documents += n;
            body_bytes += bytes;
        }
        let start = Instant::now();
        measured_drop(batch);
        spent += start.elapsed();
    }
    println!(
        "{events} events, {documents} documents written, {:.0} body bytes/document, {:.3} µs/event (wall)",
        body_bytes as f64 / documents.max(1) as f64,
        spent.as_secs_f64() * 1e6 / events as f64
    );
    Ok(())
}

/// What the indexer does as a batch's messages arrive.
#[inline(never)]
fn measured_batch(codec: &Codec, messages: Vec<OwnedMessage>, cities: usize) -> Batch {
    let mut batch = Batch::with_capacity(cities);
    for message in messages {
        batch.push(codec, message);
    }
    batch
}

/// The batch's end once written: every message and decoded write it held is freed,
/// one allocation at a time, which a live profile found to be a quarter of the
/// indexer's CPU with glibc's allocator.
#[inline(never)]
fn measured_drop(batch: Batch) {
    drop(batch);
}

/// What the indexer does for one bulk request of survivors, less the network.
#[inline(never)]
fn measured_request(request: &[&Newest], answer: &[u8]) -> (usize, usize) {
    // The writer hands its retry loop the batch's writes by reference.
    let refs: Vec<&Write> = request.iter().map(|newest| &newest.write).collect();
    let body = encode(&refs);
    let bytes = body.len();
    let attempts = parse_response(answer, &refs).unwrap_or_default();
    let done = attempts
        .iter()
        .filter(|a| matches!(a, ItemAttempt::Done(_)))
        .count();
    black_box(body);
    (done, bytes)
}

/// The engine's answer, as `filter_path` trims it, to `n` created documents.
fn answer(n: usize) -> Vec<u8> {
    let item = r#"{"index":{"status":201}}"#;
    format!("{{\"items\":[{}]}}", vec![item; n].join(",")).into_bytes()
}

fn messages(codec: &Codec, events: usize, cities: usize) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut offsets = vec![0i64; PARTITIONS as usize];
    (0..events)
        .map(|i| {
            let city = format!("City {}", i % cities.max(1));
            let key = CityKey::parse(&city)?;
            let partition = (i % cities.max(1)) as i32 % PARTITIONS;
            let offset = &mut offsets[partition as usize];
            *offset += 1;
            let payload = codec.encode(&CityPopulationUpdated {
                event_id: format!("0190b6a0-0000-7000-8000-{i:012}"),
                city,
                population: i as i64,
                occurred_at: 1_764_806_400_000_000 + i as i64,
            })?;
            Ok(OwnedMessage::new(
                Some(payload),
                Some(key.as_str().as_bytes().to_vec()),
                "city-population".into(),
                Timestamp::CreateTime(1_764_806_400_000),
                partition,
                *offset,
                None,
            ))
        })
        .collect()
}
