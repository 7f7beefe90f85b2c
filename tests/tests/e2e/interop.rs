//! Consumers and producers citypop did not write: the Apache Avro reference library
//! for Java (`BinaryMessageDecoder`, `BinaryMessageEncoder`) reads what producer-api
//! wrote, and writes a newer version of the event that the indexer reads; README's
//! Python reader (fastavro) reads it too. The other sides are in `tests/interop/`.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use citypop_schemas::CityKey;
use citypop_schemas::event::{self, Codec, Fingerprint, PUBLISHED_SCHEMAS};
use citypop_tests::engine::documents;
use citypop_tests::interop::{ToolRun, published_schema_dir, run_java, run_python_reader};
use citypop_tests::kafka::{Kafka, now_micros};
use citypop_tests::{
    Names, Readiness, Stack, spawn_indexer, spawn_indexer_with, spawn_producer_api,
};
use serde_json::{Value, json};

use crate::common::{CATCH_UP, Expected, SCHEMA_V2, expect};

/// What a 202 promised: where the event is and what it holds.
struct Posted {
    key: String,
    event_id: String,
    /// The display name the event must carry (NFC, trimmed); `None` for a delete.
    city: Option<String>,
    population: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_and_python_read_every_message_producer_api_wrote() {
    let stack = Stack::from_env();
    let names = Names::unique("interop-read");
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api(&stack, &names).await;
    let http = reqwest::Client::new();

    let before = now_micros();
    let mut posted: BTreeMap<(i64, i64), Posted> = BTreeMap::new();
    for (name, city, population) in [
        ("Paris", "Paris", 2_102_650),
        // Decomposed and padded: the event carries the NFC, trimmed name.
        ("  Sa\u{0303}o Paulo ", "S\u{00e3}o Paulo", 12_325_232),
        ("ZÜRICH", "ZÜRICH", 0),
        ("東京", "東京", 10_000_000_000),
        ("Paris", "Paris", 2_102_651),
    ] {
        let reply = http
            .post(format!("{}/city", api.base_url))
            .json(&json!({"name": name, "population": population}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 202);
        let body: Value = reply.json().await.unwrap();
        posted.insert(
            (
                body["partition"].as_i64().unwrap(),
                body["offset"].as_i64().unwrap(),
            ),
            Posted {
                key: body["key"].as_str().unwrap().to_owned(),
                event_id: body["event_id"].as_str().unwrap().to_owned(),
                city: Some(city.to_owned()),
                population,
            },
        );
    }
    let reply = http
        .delete(format!("{}/city/Paris", api.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 202);
    let body: Value = reply.json().await.unwrap();
    posted.insert(
        (
            body["partition"].as_i64().unwrap(),
            body["offset"].as_i64().unwrap(),
        ),
        Posted {
            key: "paris".into(),
            event_id: body["event_id"].as_str().unwrap().to_owned(),
            city: None,
            population: 0,
        },
    );
    let after = now_micros();

    let schema_dir = published_schema_dir().display().to_string();
    let args = ["read", &stack.kafka, &names.topic, &schema_dir];
    check_read(
        "Java's BinaryMessageDecoder",
        run_java(&args).await,
        &posted,
        before..=after,
    );
    // README's Python example, run as written there.
    check_read(
        "fastavro",
        run_python_reader(&args[1..]).await,
        &posted,
        before..=after,
    );
}

/// Every message was decoded and holds what its 202 announced.
fn check_read(
    reader: &str,
    run: ToolRun,
    posted: &BTreeMap<(i64, i64), Posted>,
    accepted: RangeInclusive<i64>,
) {
    let errors: Vec<&Value> = run
        .lines
        .iter()
        .filter(|l| l.get("error").is_some())
        .collect();
    assert!(
        run.success && errors.is_empty(),
        "{reader} could not decode every message: {errors:#?}\n{}",
        run.stderr
    );
    assert_eq!(run.lines.len(), posted.len(), "{reader}: {:#?}", run.lines);

    let fingerprint = Codec::new().writer_fingerprint().to_string();
    for line in &run.lines {
        let at = (
            line["partition"].as_i64().unwrap(),
            line["offset"].as_i64().unwrap(),
        );
        let want = posted
            .get(&at)
            .unwrap_or_else(|| panic!("{reader} read a message no 202 announced: {line}"));
        assert_eq!(line["key"], want.key.as_str(), "{reader}: {line}");
        match &want.city {
            Some(city) => {
                let value = &line["value"];
                assert_eq!(
                    value["event_id"],
                    want.event_id.as_str(),
                    "{reader}: {line}"
                );
                assert_eq!(value["city"], city.as_str(), "{reader}: {line}");
                assert_eq!(value["population"], want.population, "{reader}: {line}");
                let occurred_at = value["occurred_at"].as_i64().unwrap();
                assert!(accepted.contains(&occurred_at), "{reader}: {line}");
                assert_eq!(
                    line["writer_fingerprint"],
                    fingerprint.as_str(),
                    "{reader}: {line}"
                );
                assert_eq!(
                    line["headers"]["content-type"],
                    event::CONTENT_TYPE,
                    "{reader}: {line}"
                );
            }
            None => {
                assert!(
                    line["value"].is_null(),
                    "{reader}: a delete is a tombstone: {line}"
                );
                let headers = &line["headers"];
                assert_eq!(
                    headers[event::HEADER_EVENT_ID],
                    want.event_id.as_str(),
                    "{reader}: {line}"
                );
                let occurred_at: i64 = headers[event::HEADER_OCCURRED_AT]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("{reader}: no occurred_at header: {line}"));
                assert!(accepted.contains(&occurred_at), "{reader}: {line}");
            }
        }
        assert!(
            line["headers"]["traceparent"].as_str().is_some(),
            "{reader}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_reads_a_v2_event_java_wrote() {
    let stack = Stack::from_env();
    let names = Names::unique("interop-write");
    // v2 is not published (the product does not write it): like an operator with a
    // newer producer, the test hands it to the indexer in CITYPOP_SCHEMA_DIR.
    let schema_dir =
        std::env::temp_dir().join(format!("citypop-schemas-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&schema_dir).unwrap();
    let v2_file = schema_dir.join("city_population_updated.v2.avsc");
    std::fs::write(&v2_file, SCHEMA_V2).unwrap();
    let indexer = spawn_indexer_with(
        &stack,
        &names,
        &[("CITYPOP_SCHEMA_DIR", schema_dir.display().to_string())],
        Readiness::Ready,
    )
    .await;

    let event_id = uuid::Uuid::now_v7().to_string();
    let record = json!({
        "event_id": event_id,
        "city": "Lyon",
        "population": 522_250,
        "occurred_at": now_micros(),
        "country": "FR",
    });
    let key = CityKey::parse("Lyon").unwrap().as_str().to_owned();
    let run = run_java(&[
        "write",
        &stack.kafka,
        &names.topic,
        &v2_file.display().to_string(),
        &key,
        &record.to_string(),
        "application/vnd.citypop.city-population-updated.v2+avro",
    ])
    .await;
    assert!(run.success, "{:#?}\n{}", run.lines, run.stderr);
    let written = &run.lines[0];
    // Both libraries name v2 alike: the fingerprint is the specification's.
    assert_eq!(
        written["writer_fingerprint"],
        Fingerprint::of_schema(SCHEMA_V2).unwrap().to_string(),
        "{written}"
    );
    let offset = written["offset"].as_i64().unwrap();

    let deadline = Instant::now() + CATCH_UP;
    loop {
        let docs = documents(&stack.elasticsearch, &names.alias).await;
        if let Some(doc) = docs.get(&key) {
            assert_eq!(doc["name"], "Lyon", "{doc}");
            assert_eq!(doc["population"], 522_250, "{doc}");
            assert_eq!(doc["version"], offset, "{doc}");
            assert_eq!(doc["event_id"], event_id.as_str(), "{doc}");
            break;
        }
        let dead = indexer
            .metric("citypop_indexer_dead_letters_total{reason=\"schema\"}")
            .await;
        assert_eq!(
            dead,
            0.0,
            "the v2 event was dead-lettered:\n{}",
            indexer.log()
        );
        assert!(
            Instant::now() < deadline,
            "lyon never indexed:\n{}",
            indexer.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Needs no service: Java's `SchemaNormalization` and citypop agree on every
/// published schema's canonical form and fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_computes_the_fingerprint_citypop_writes_for_every_published_schema() {
    let dir = published_schema_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "avsc"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        PUBLISHED_SCHEMAS.len(),
        "every file in {} is compiled in",
        dir.display()
    );
    let args: Vec<&str> = std::iter::once("fingerprint")
        .chain(files.iter().map(String::as_str))
        .collect();
    let run = run_java(&args).await;
    assert!(run.success, "{}", run.stderr);
    for (line, file) in run.lines.iter().zip(&files) {
        let json = std::fs::read_to_string(file).unwrap();
        let ours = Fingerprint::of_schema(&json).unwrap();
        assert_eq!(line["wire"], ours.to_string(), "{file}: {line}");
        assert_eq!(
            line["canonical_form"],
            citypop_schemas::fingerprint::parsing_canonical_form(
                &serde_json::from_str(&json).unwrap()
            )
            .unwrap(),
            "{file}"
        );
    }
    let newest = run.lines.last().unwrap();
    assert_eq!(
        newest["wire"],
        Codec::new().writer_fingerprint().to_string(),
        "the codec writes the newest published schema's fingerprint"
    );
}

/// Releases before issue 12 wrote v1 under the fingerprint `apache-avro` computes;
/// a topic that holds such messages is still indexed (and replayed) after upgrading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_still_reads_what_earlier_releases_wrote() {
    const LEGACY_V1: [u8; 8] = [0x0a, 0x00, 0x77, 0x11, 0x8e, 0xca, 0xaa, 0xc1];
    let stack = Stack::from_env();
    let names = Names::unique("interop-legacy");
    let kafka = Kafka::connect(&stack.kafka);
    let indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    for (city, population) in [("Old Town", 1_000), ("New Town", 2_000)] {
        let mut payload = kafka.encode(city, population, now_micros());
        if city == "Old Town" {
            payload[2..10].copy_from_slice(&LEGACY_V1);
        }
        let key = CityKey::parse(city).unwrap().as_str().to_owned();
        let (_, offset) = kafka
            .produce(
                &names.topic,
                &key,
                Some(&payload),
                &[("content-type", event::CONTENT_TYPE)],
            )
            .await;
        expect(&mut expected, &key, offset, population);
    }
    // A message the indexer cannot read is dead-lettered at once: fail then, not
    // after the whole wait.
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let docs = documents(&stack.elasticsearch, &names.alias).await;
        let indexed = expected.iter().all(|(key, (offset, population))| {
            docs.get(key)
                .is_some_and(|d| d["population"] == *population && d["version"] == *offset)
        });
        if indexed {
            break;
        }
        let series = "citypop_indexer_dead_letters_total{reason=\"schema\"}";
        assert_eq!(indexer.metric(series).await, 0.0, "{}", indexer.log());
        assert!(Instant::now() < deadline, "{docs:?}\n{}", indexer.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
