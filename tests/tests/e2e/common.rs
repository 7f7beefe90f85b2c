//! Checks shared by the end-to-end tests: what the index must hold, and waiting
//! for it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use citypop_tests::engine::documents;
use citypop_tests::kafka::Kafka;
use citypop_tests::{Service, Stack};

/// How long the indexer may take to catch up with what was produced.
pub const CATCH_UP: Duration = Duration::from_secs(180);

pub use citypop_tests::kafka::SCHEMA_V2;

/// Last (offset, population) per key: what the index must end up holding.
pub type Expected = HashMap<String, (i64, i64)>;

pub fn expect(expected: &mut Expected, key: &str, offset: i64, population: i64) {
    let entry = expected
        .entry(key.to_owned())
        .or_insert((offset, population));
    if offset >= entry.0 {
        *entry = (offset, population);
    }
}

/// Produces `count` updates spread over `cities` cities named after `prefix`, with
/// populations starting at `first_population`, and records them in `expected`.
pub async fn load(
    kafka: &Kafka,
    topic: &str,
    expected: &mut Expected,
    prefix: &str,
    cities: usize,
    count: usize,
    first_population: i64,
) {
    let updates = (0..count)
        .map(|i| {
            (
                format!("{prefix} {}", i % cities),
                first_population + i as i64,
            )
        })
        .collect();
    for (key, offset, population) in kafka.produce_updates(topic, updates).await {
        expect(expected, &key, offset, population);
    }
}

/// Waits until the index holds exactly `expected` (population and version per key,
/// nothing deleted), then returns; panics with examples after `CATCH_UP`.
pub async fn wait_for_index(stack: &Stack, alias: &str, expected: &Expected) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let docs = documents(&stack.elasticsearch, alias).await;
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(key, (offset, population))| {
                docs.get(*key).is_none_or(|d| {
                    d["population"] != *population
                        || d["version"] != *offset
                        || d["deleted"] == true
                })
            })
            .map(|(key, want)| format!("{key}: want {want:?}, got {:?}", docs.get(key)))
            .take(5)
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "index {alias} never caught up, e.g. {wrong:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `series` on the service's metrics reaches `value`.
pub async fn wait_for_metric(service: &Service, series: &str, value: f64) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let current = service.metric(series).await;
        if current >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {current}, want {value}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `CITYPOP_RETRY_MAX_DELAY`'s default, which the tests' indexers run with.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Waits until the indexer answers `/readyz` with 200 again after an outage it
/// retried through. The index can be whole before that: a failing batch whose
/// writes a newer batch has already superseded still waits for its next attempt,
/// up to the retry's longest delay, and the indexer is not ready until it has run.
pub async fn wait_until_ready(indexer: &Service, after: &str) {
    let since = Instant::now();
    let mut readiness = indexer.readiness().await;
    while readiness != 200 && since.elapsed() < RETRY_MAX_DELAY + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        readiness = indexer.readiness().await;
    }
    assert_eq!(
        readiness,
        200,
        "not ready again {after}, {:?} after being asked (the retry's longest delay is {RETRY_MAX_DELAY:?})",
        since.elapsed()
    );
}

/// Waits until `group` has committed everything `topic` holds: all of it handled.
pub async fn wait_for_committed(kafka: &Kafka, group: &str, topic: &str) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let ends: BTreeMap<i32, i64> = kafka
            .end_offsets(topic)
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .collect();
        let committed = kafka.committed(group, topic);
        if committed == ends {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} committed {committed:?}, topic ends at {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
