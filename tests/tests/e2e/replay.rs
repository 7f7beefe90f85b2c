//! `indexer replay`: a rebuild into a new index while live writes go on, and at scale.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use citypop_tests::api_client::ApiClient;
use citypop_tests::engine::{documents, indexes_behind};
use citypop_tests::fault_proxy::{FaultProxy, OnRequest};
use citypop_tests::kafka::Kafka;
use citypop_tests::{
    Names, Stack, indexer_command, indexer_command_builder, run_indexer_command, spawn_indexer,
    spawn_producer_api,
};
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

/// What happens to a replay, and where.
#[derive(Debug, Clone, Copy)]
enum Interruption {
    /// SIGINT while the old index is blocked and the new one not yet swapped in.
    SigintWhileBlocked,
    /// The engine fails the swap itself, then comes back.
    EngineErrorAtSwap,
    /// SIGINT just after the swap.
    SigintAfterSwap,
    /// The engine goes away just after the swap, then comes back.
    EngineErrorAfterSwap,
}

/// The settings of one index (`number_of_replicas`, `blocks`, ...).
async fn index_settings(engine: &str, index: &str) -> Value {
    let body: Value = reqwest::get(format!("{engine}/{index}/_settings"))
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("settings of {index}: {e}"))
        .json()
        .await
        .expect("settings body");
    body[index]["settings"]["index"].clone()
}

/// A replay stopped at one of its riskiest moments must leave the live index as it
/// was or better: no write block left behind, the serving index with its replicas,
/// the live indexer writing, nothing lost.
async fn interrupted_replay_leaves_the_live_index_whole(interruption: Interruption) {
    const REPLICAS: &str = "1";
    let stack = Stack::from_env();
    let names = Names::unique("replaystop");
    let kafka = Kafka::connect(&stack.kafka);
    let _indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Stop City",
        100,
        1000,
        0,
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;
    let old_index = format!("{}-initial", names.alias);

    let proxy = FaultProxy::start(stack.elasticsearch.trim_start_matches("http://")).await;
    let (needle, action) = match interruption {
        // The refresh of the new index runs between the block and the swap.
        Interruption::SigintWhileBlocked => ("/_refresh", OnRequest::Hold(Duration::from_secs(3))),
        Interruption::EngineErrorAtSwap => ("POST /_aliases", OnRequest::CutBefore),
        Interruption::SigintAfterSwap => ("POST /_aliases", OnRequest::Pass),
        Interruption::EngineErrorAfterSwap => (
            "POST /_aliases",
            OnRequest::CutAfter(Duration::from_millis(500)),
        ),
    };
    let seen = proxy.watch(needle, action);
    let replay = indexer_command_builder(
        &stack,
        &names,
        &["replay", "--json"],
        &[
            ("CITYPOP_ELASTICSEARCH_URL", proxy.url()),
            ("CITYPOP_INDEX_REPLICAS", REPLICAS.into()),
            ("CITYPOP_RETRY_MAX_DELAY", "1s".into()),
        ],
    )
    .spawn()
    .expect("starting the replay");
    tokio::time::timeout(REPLAY_TIMEOUT, seen.notified())
        .await
        .unwrap_or_else(|_| panic!("the replay never sent {needle}"));
    match interruption {
        Interruption::SigintWhileBlocked | Interruption::SigintAfterSwap => {
            let pid = replay.id().expect("replay pid").to_string();
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
        }
        Interruption::EngineErrorAtSwap | Interruption::EngineErrorAfterSwap => {
            // Long enough for a few failed attempts at whatever comes next.
            tokio::time::sleep(Duration::from_secs(4)).await;
            proxy.restore();
        }
    }
    let output = tokio::time::timeout(REPLAY_TIMEOUT, replay.wait_with_output())
        .await
        .expect("the replay ends")
        .expect("replay output");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Writes made after the replay ended reach the serving index.
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Stop City",
        100,
        300,
        10_000,
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;

    let serving = indexes_behind(&stack.elasticsearch, &names.alias).await;
    assert_eq!(serving.len(), 1, "{serving:?}\n{log}");
    let serving = &serving[0];
    let settings = index_settings(&stack.elasticsearch, serving).await;
    let want_replicas = if *serving == old_index { "0" } else { REPLICAS };
    assert_eq!(
        settings["number_of_replicas"], want_replicas,
        "{interruption:?}: the serving index {serving} has its replicas: {settings}\n{log}"
    );
    for index in [&old_index, serving] {
        let settings = index_settings(&stack.elasticsearch, index).await;
        assert_ne!(
            settings["blocks"]["write"], "true",
            "{interruption:?}: {index} is still write-blocked\n{log}"
        );
    }
    if *serving == old_index {
        // Not swapped: the half-built index is gone.
        let all: Value = reqwest::get(format!(
            "{}/{}-*/_settings",
            stack.elasticsearch, names.alias
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(
            all.as_object().map(|o| o.len()),
            Some(1),
            "{interruption:?}: only the old index is left: {all}\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_between_the_block_and_the_swap_leaves_the_live_index_whole() {
    interrupted_replay_leaves_the_live_index_whole(Interruption::SigintWhileBlocked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_error_at_the_swap_leaves_the_live_index_whole() {
    interrupted_replay_leaves_the_live_index_whole(Interruption::EngineErrorAtSwap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_right_after_the_swap_leaves_the_live_index_whole() {
    interrupted_replay_leaves_the_live_index_whole(Interruption::SigintAfterSwap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_error_right_after_the_swap_leaves_the_live_index_whole() {
    interrupted_replay_leaves_the_live_index_whole(Interruption::EngineErrorAfterSwap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_a_topic_that_is_not_compacted_unless_told() {
    let stack = Stack::from_env();
    let names = Names::unique("replaydelete");
    let kafka = Kafka::connect(&stack.kafka);
    kafka
        .create_topic_with(&names.topic, 12, &[("cleanup.policy", "delete")])
        .await;
    let _indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    load(&kafka, &names.topic, &mut expected, "Old City", 20, 20, 0).await;
    wait_for_index(&stack, &names.alias, &expected).await;

    let plan = run_indexer_command(
        &stack,
        &names,
        &["replay", "--dry-run"],
        &[],
        REPLAY_TIMEOUT,
    )
    .await;
    assert!(
        plan.contains("refused without --allow-incomplete"),
        "{plan}"
    );
    let refused = indexer_command(&stack, &names, &["replay"], &[], REPLAY_TIMEOUT).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "replay ran: {stderr}");
    assert!(
        stderr.contains("cleanup.policy") && stderr.contains("--allow-incomplete"),
        "{stderr}"
    );
    assert_eq!(
        indexes_behind(&stack.elasticsearch, &names.alias).await,
        [format!("{}-initial", names.alias)]
    );

    let summary: Value = serde_json::from_str(
        &run_indexer_command(
            &stack,
            &names,
            &["replay", "--allow-incomplete", "--json"],
            &[],
            REPLAY_TIMEOUT,
        )
        .await,
    )
    .unwrap();
    assert_eq!(summary["events"], 20, "{summary}");
    wait_for_index(&stack, &names.alias, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_to_swap_in_an_index_with_fewer_documents_unless_forced() {
    const GHOSTS: usize = 5;
    let stack = Stack::from_env();
    let names = Names::unique("replaycount");
    let kafka = Kafka::connect(&stack.kafka);
    let _indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    load(&kafka, &names.topic, &mut expected, "Real City", 30, 30, 0).await;
    wait_for_index(&stack, &names.alias, &expected).await;
    // Documents the topic no longer has (as after a retention that deleted them):
    // a rebuild from the topic would lose them.
    let old_index = format!("{}-initial", names.alias);
    let http = reqwest::Client::new();
    for i in 0..GHOSTS {
        let key = format!("ghost city {i}");
        http.put(format!(
            "{}/{old_index}/_doc/{}?refresh=true",
            stack.elasticsearch,
            key.replace(' ', "%20")
        ))
        .json(&serde_json::json!({
            "key": key, "name": format!("Ghost City {i}"), "population": 1,
            "updated_at": "2026-01-01T00:00:00Z", "version": 0, "partition": 0,
            "event_id": "00000000-0000-7000-8000-000000000000", "deleted": false
        }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("writing a ghost document");
    }

    let refused = indexer_command(&stack, &names, &["replay"], &[], REPLAY_TIMEOUT).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "replay swapped: {stderr}");
    assert!(
        stderr.contains("30 live documents") && stderr.contains("35") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        indexes_behind(&stack.elasticsearch, &names.alias).await,
        std::slice::from_ref(&old_index)
    );
    assert_ne!(
        index_settings(&stack.elasticsearch, &old_index).await["blocks"]["write"],
        "true"
    );
    // The live indexer still writes.
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Real City",
        30,
        30,
        100,
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;

    let summary: Value = serde_json::from_str(
        &run_indexer_command(
            &stack,
            &names,
            &["replay", "--force", "--json"],
            &[],
            REPLAY_TIMEOUT,
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        indexes_behind(&stack.elasticsearch, &names.alias).await,
        [summary["index"].as_str().unwrap()]
    );
    wait_for_index(&stack, &names.alias, &expected).await;
}
