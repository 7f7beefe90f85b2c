//! `indexer replay`: a rebuild into a new index while live writes go on, and at scale.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use citypop_tests::api_client::ApiClient;
use citypop_tests::engine::{documents, indexes_behind};
use citypop_tests::kafka::Kafka;
use citypop_tests::{Names, Stack, run_indexer_command, spawn_indexer, spawn_producer_api};
use rand::Rng;
use serde_json::Value;

use crate::common::{Expected, expect, load, wait_for_index};

const CITIES: usize = 500;
/// Cities the reader watches during the replay.
const WATCHED: usize = 50;
const PRELOAD: usize = 20_000;
const REPLAY_TIMEOUT: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_during_live_writes_never_shows_a_gap_or_a_step_back() {
    let stack = Stack::from_env();
    let names = Names::unique("replay");
    let kafka = Arc::new(Kafka::connect(&stack.kafka));
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api(&stack, &names).await;

    let mut preload = Expected::new();
    // Enough history that the replay takes a while, in small batches, so the reader
    // below reads through all of it: loading, the swap, and the read-on after it.
    load(
        &kafka,
        &names.topic,
        &mut preload,
        "Replay City",
        CITIES,
        PRELOAD,
        0,
    )
    .await;
    wait_for_index(&stack, &names.alias, &preload).await;
    let expected = Arc::new(Mutex::new(preload));
    let stop = Arc::new(AtomicBool::new(false));

    // Live writes all through the replay.
    let writer = {
        let (kafka, expected, stop, topic) = (
            kafka.clone(),
            expected.clone(),
            stop.clone(),
            names.topic.clone(),
        );
        tokio::spawn(async move {
            let mut round = 1_000_000;
            while !stop.load(Ordering::SeqCst) {
                let updates = (0..100)
                    .map(|_| {
                        round += 1;
                        (
                            format!("Replay City {}", rand::rng().random_range(0..CITIES)),
                            round,
                        )
                    })
                    .collect();
                let produced = kafka.produce_updates(&topic, updates).await;
                {
                    let mut expected = expected.lock().unwrap();
                    for (key, offset, population) in produced {
                        expect(&mut expected, &key, offset, population);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // A reader that must never see a watched city missing or going back in time.
    let reader = {
        let (stop, client) = (stop.clone(), ApiClient::of(&api));
        tokio::spawn(async move {
            let mut versions: BTreeMap<usize, i64> = BTreeMap::new();
            let mut problems = Vec::new();
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                for city in 0..WATCHED {
                    let reply = client.get_city(&format!("replay city {city}"), "").await;
                    let (status, body) = (reply.status, reply.body);
                    reads += 1;
                    if status != 200 {
                        problems.push(format!("city {city}: {status} {body}"));
                        continue;
                    }
                    let version = body["version"].as_i64().expect("version");
                    let before = versions.insert(city, version).unwrap_or(-1);
                    if version < before {
                        problems.push(format!(
                            "city {city} went back from version {before} to {version}"
                        ));
                    }
                }
            }
            (reads, problems)
        })
    };

    let small_batches = [
        ("CITYPOP_BATCH_MAX_EVENTS", "500".to_owned()),
        ("CITYPOP_BULK_MAX_DOCUMENTS", "250".to_owned()),
    ];
    let output = run_indexer_command(
        &stack,
        &names,
        &["replay", "--delete-old", "--json"],
        &small_batches,
        REPLAY_TIMEOUT,
    )
    .await;
    let summary: Value =
        serde_json::from_str(&output).unwrap_or_else(|e| panic!("summary {output:?}: {e}"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let (reads, problems) = reader.await.unwrap();

    assert!(
        problems.is_empty(),
        "{} bad reads of {reads}, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );
    assert!(
        reads >= 2 * WATCHED,
        "the reader kept reading through the replay ({reads} reads)"
    );
    let expected = expected.lock().unwrap().clone();
    wait_for_index(&stack, &names.alias, &expected).await;

    let new_index = summary["index"].as_str().unwrap();
    let old_index = format!("{}-initial", names.alias);
    assert_eq!(summary["previous"], serde_json::json!([old_index]));
    assert!(
        summary["events"].as_u64().unwrap() >= PRELOAD as u64,
        "{summary}"
    );
    assert_eq!(
        indexes_behind(&stack.elasticsearch, &names.alias).await,
        [new_index]
    );
    let old = reqwest::get(format!("{}/{old_index}", stack.elasticsearch))
        .await
        .unwrap();
    assert_eq!(old.status(), 404, "--delete-old removed the previous index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_a_hundred_thousand_events_and_counts_them() {
    const EVENTS: usize = 100_000;
    const CITIES: usize = 10_000;
    let stack = Stack::from_env();
    let names = Names::unique("scale");
    let kafka = Kafka::connect(&stack.kafka);
    let indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    for chunk in 0..10 {
        let first = (chunk * EVENTS / 10) as i64;
        load(
            &kafka,
            &names.topic,
            &mut expected,
            "Scale City",
            CITIES,
            EVENTS / 10,
            first,
        )
        .await;
    }
    wait_for_index(&stack, &names.alias, &expected).await;
    drop(indexer);

    let output =
        run_indexer_command(&stack, &names, &["replay", "--json"], &[], REPLAY_TIMEOUT).await;
    let summary: Value =
        serde_json::from_str(&output).unwrap_or_else(|e| panic!("summary {output:?}: {e}"));
    assert_eq!(summary["events"], EVENTS as u64, "{summary}");
    assert_eq!(summary["dead_letters"], serde_json::json!({}), "{summary}");
    assert!(summary["events_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(
        indexes_behind(&stack.elasticsearch, &names.alias).await,
        [summary["index"].as_str().unwrap()]
    );
    wait_for_index(&stack, &names.alias, &expected).await;
    assert_eq!(
        documents(&stack.elasticsearch, &names.alias).await.len(),
        CITIES
    );
}
