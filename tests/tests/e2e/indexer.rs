//! The indexer's delivery contract under faults: poison, engine outage, kill -9,
//! SIGTERM, out-of-order writes, a recreated topic, deletes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::{
    CATCH_UP, Expected, expect, load, wait_for_committed, wait_for_index, wait_for_metric,
    wait_until_ready,
};
use citypop_schemas::CityKey;
use citypop_tests::api_client::ApiClient;
use citypop_tests::engine::{create_index, create_narrow_index, documents, update_aliases};
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::kafka::{Kafka, now_micros};
use citypop_tests::{
    Names, Readiness, Service, Stack, cpu_time, spawn_indexer, spawn_indexer_with,
    spawn_producer_api,
};
use futures::StreamExt;
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic_and_every_good_event_is_indexed() {
    const GOOD: usize = 5000;
    const POISON: usize = 200;
    let stack = Stack::from_env();
    let names = Names::unique("poison");
    let kafka = Kafka::connect(&stack.kafka);

    // Populations above 2^31 are then rejected by the engine: `rejected` poison.
    create_narrow_index(&stack.elasticsearch, &names.alias).await;
    let indexer = spawn_indexer(&stack, &names).await;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        Good,
        Decode,
        Schema,
        Rejected,
    }
    struct Planned {
        kind: Kind,
        key: String,
        payload: Vec<u8>,
        population: i64,
    }
    let mut plan: Vec<(Kind, usize)> = (0..GOOD).map(|i| (Kind::Good, i)).collect();
    for i in 0..POISON {
        let kind = [Kind::Decode, Kind::Schema, Kind::Rejected][i % 3];
        plan.push((kind, i));
    }
    plan.shuffle(&mut rand::rng());

    // Poison has cities of its own, so coalescing never folds it into a good event
    // of the same city.
    let messages: Vec<Planned> = plan
        .into_iter()
        .map(|(kind, i)| {
            let city = match kind {
                Kind::Good => format!("Good City {}", i % 1000),
                _ => format!("Poison City {i}"),
            };
            let key = CityKey::parse(&city).unwrap().as_str().to_owned();
            let payload = match kind {
                Kind::Good => kafka.encode(&city, i as i64, now_micros()),
                Kind::Decode => b"{\"name\":\"not avro\"}".to_vec(),
                Kind::Schema => {
                    let mut bytes = kafka.encode(&city, 1, now_micros());
                    bytes[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1]);
                    bytes
                }
                Kind::Rejected => kafka.encode(&city, 5_000_000_000, now_micros()),
            };
            Planned {
                kind,
                key,
                payload,
                population: i as i64,
            }
        })
        .collect();
    let produced: Vec<((i32, i64), Planned)> = futures::stream::iter(messages)
        .map(|planned| {
            let kafka = &kafka;
            let topic = names.topic.as_str();
            async move {
                let position = kafka
                    .produce(
                        topic,
                        &planned.key,
                        Some(&planned.payload),
                        &[("origin", "test")],
                    )
                    .await;
                (position, planned)
            }
        })
        .buffered(64)
        .collect()
        .await;
    let mut expected = Expected::new();
    // (partition, offset) → (reason, key, payload) of each poison message.
    let mut poison: BTreeMap<(i32, i64), (&str, String, Vec<u8>)> = BTreeMap::new();
    for (position, planned) in produced {
        let reason = match planned.kind {
            Kind::Good => {
                expect(&mut expected, &planned.key, position.1, planned.population);
                continue;
            }
            Kind::Decode => "decode",
            Kind::Schema => "schema",
            Kind::Rejected => "rejected",
        };
        poison.insert(position, (reason, planned.key, planned.payload));
    }
    assert_eq!(poison.len(), POISON);

    wait_for_index(&stack, &names.alias, &expected).await;
    for reason in ["decode", "schema", "rejected"] {
        let want = poison.values().filter(|(r, _, _)| *r == reason).count() as f64;
        wait_for_metric(
            &indexer,
            &format!("citypop_indexer_dead_letters_total{{reason=\"{reason}\"}}"),
            want,
        )
        .await;
    }

    let dead_letters = kafka.read_all(&format!("{}.dlq", names.topic));
    assert_eq!(
        dead_letters.len(),
        POISON,
        "exactly the poison is dead-lettered"
    );
    for letter in &dead_letters {
        let h = &letter.headers;
        let position = (
            h["citypop.dlq.partition"].parse().unwrap(),
            h["citypop.dlq.offset"].parse().unwrap(),
        );
        let (reason, key, payload) = poison
            .get(&position)
            .unwrap_or_else(|| panic!("dead letter for {position:?} is not poison: {h:?}"));
        assert_eq!(&h["citypop.dlq.reason"], reason);
        assert_eq!(h["citypop.dlq.topic"], names.topic);
        assert!(!h["citypop.dlq.error"].is_empty());
        assert!(h["citypop.dlq.failed_at"].starts_with("20"), "{h:?}");
        assert_eq!(h["origin"], "test", "original headers are kept");
        assert_eq!(letter.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(letter.payload.as_deref(), Some(payload.as_slice()));
    }
    let docs = documents(&stack.elasticsearch, &names.alias).await;
    assert_eq!(docs.len(), expected.len(), "no poison reached the index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outage_is_retried_without_loss_or_dead_letters() {
    let stack = Stack::from_env();
    let names = Names::unique("outage");
    let kafka = Kafka::connect(&stack.kafka);
    let proxy = FaultProxy::start(stack.engine_host()).await;
    let indexer = spawn_indexer_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", proxy.url()),
            ("CITYPOP_RETRY_MAX_DELAY", "2s".into()),
            ("CITYPOP_ELASTICSEARCH_TIMEOUT", "5s".into()),
        ],
        Readiness::Ready,
    )
    .await;

    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Outage City",
        300,
        1500,
        100_000,
    )
    .await;
    proxy.cut().await;
    let cut_at = Instant::now();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Outage City",
        300,
        1500,
        200_000,
    )
    .await;
    let mut saw_not_ready = false;
    while cut_at.elapsed() < Duration::from_secs(20) {
        saw_not_ready |= indexer.readiness().await == 503;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Outage City",
        300,
        1500,
        300_000,
    )
    .await;
    assert!(saw_not_ready, "/readyz answered 503 during the outage");

    wait_for_index(&stack, &names.alias, &expected).await;
    // Two failing batches of the same cities: the newer one's retry can make the
    // index whole while the older one still waits for its next attempt.
    wait_until_ready(&indexer, "after the outage").await;
    assert!(
        indexer
            .metric("citypop_indexer_retries_total{reason=\"request\"}")
            .await
            >= 1.0
    );
    assert!(
        kafka.read_all(&format!("{}.dlq", names.topic)).is_empty(),
        "no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_indexer_five_times_loses_nothing_and_never_goes_back() {
    const EVENTS: usize = 20_000;
    let stack = Stack::from_env();
    let names = Names::unique("kill");
    // Static membership: each replacement takes the partitions back at once.
    let settings = [("CITYPOP_GROUP_INSTANCE_ID", "indexer-0".to_owned())];
    let mut indexer = spawn_indexer_with(&stack, &names, &settings, Readiness::Ready).await;

    // The load runs in the background, in chunks with pauses, so it spans the kills.
    let topic = names.topic.clone();
    let bootstrap = stack.kafka.clone();
    let load = tokio::spawn(async move {
        let kafka = Kafka::connect(&bootstrap);
        let mut expected = Expected::new();
        for chunk in 0..40 {
            let first = chunk * (EVENTS / 40);
            let updates = (first..first + EVENTS / 40)
                .map(|i| (format!("Kill City {}", i % 2000), i as i64))
                .collect();
            for (key, offset, population) in kafka.produce_updates(&topic, updates).await {
                expect(&mut expected, &key, offset, population);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        expected
    });
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for _ in 0..5 {
        let pause = rand::rng().random_range(1000..2500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        indexer.kill();
        // No document may ever move back to an older version.
        for (key, doc) in documents(&stack.elasticsearch, &names.alias).await {
            let version = doc["version"].as_i64().unwrap();
            let before = seen.insert(key.clone(), version).unwrap_or(-1);
            assert!(
                version >= before,
                "{key} went back from version {before} to {version}"
            );
        }
        indexer = spawn_indexer_with(&stack, &names, &settings, Readiness::Ready).await;
    }
    let expected = load.await.unwrap();
    wait_for_index(&stack, &names.alias, &expected).await;
    drop(indexer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_and_a_restart_reindexes_nothing() {
    let stack = Stack::from_env();
    let names = Names::unique("sigterm");
    let kafka = Kafka::connect(&stack.kafka);
    let indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    load(&kafka, &names.topic, &mut expected, "Term City", 50, 500, 0).await;
    wait_for_metric(&indexer, "citypop_indexer_events_consumed_total", 500.0).await;
    wait_for_index(&stack, &names.alias, &expected).await;

    assert!(indexer.terminate().await.success(), "exit 0 on SIGTERM");
    assert_eq!(
        kafka.committed(&names.group, &names.topic),
        kafka
            .end_offsets(&names.topic)
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .collect(),
        "every consumed offset is committed"
    );

    let restarted = spawn_indexer(&stack, &names).await;
    // Give a re-read the time to show up, then add a known tail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..10 {
        kafka
            .produce_update(&names.topic, &format!("Term City {i}"), 1000 + i)
            .await;
    }
    wait_for_metric(&restarted, "citypop_indexer_events_consumed_total", 10.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        restarted
            .metric("citypop_indexer_events_consumed_total")
            .await,
        10.0,
        "the restart consumed only the new tail"
    );
}

/// A member stopped with SIGTERM leaves its group on the way out, so the others
/// take its partitions at once; without the leave the group waits out the session
/// timeout (45 s) with those partitions unread. The chaos soak's rolling restarts
/// showed it: each indexer restarted took 45 s to get partitions again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_stopped_with_sigterm_hands_its_partitions_over_at_once() {
    const HANDOVER: Duration = Duration::from_secs(15);
    let stack = Stack::from_env();
    let names = Names::unique("leave");
    let staying = spawn_indexer(&stack, &names).await;
    let leaving = spawn_indexer(&stack, &names).await;
    let deadline = Instant::now() + CATCH_UP;
    while assigned(&staying).await == 0 || assigned(&leaving).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the two indexers never shared the partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(leaving.terminate().await.success(), "exit 0 on SIGTERM");
    let stopped = Instant::now();
    while assigned(&staying).await < 12 {
        assert!(
            stopped.elapsed() < HANDOVER,
            "the remaining indexer had {} of 12 partitions {HANDOVER:?} after the other stopped",
            assigned(&staying).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many partitions an indexer's `/status` says it owns.
async fn assigned(indexer: &Service) -> usize {
    let status: Value = match reqwest::get(format!("{}/status", indexer.base_url)).await {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    status["partitions"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_older_offsets_into_the_index_never_overwrites_newer_ones() {
    let stack = Stack::from_env();
    let names = Names::unique("order");
    let kafka = Kafka::connect(&stack.kafka);
    let first = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Order City",
        100,
        600,
        0,
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;
    drop(first);
    let before = documents(&stack.elasticsearch, &names.alias).await;

    // A second group reads the topic from offset 0 into the same index: every
    // write it makes is older than or equal to what the index holds.
    let again = names.rebuild("again").with_alias(&names.alias);
    let replayer = spawn_indexer(&stack, &again).await;
    wait_for_committed(&kafka, &again.group, &names.topic).await;
    let stale = replayer
        .metric("citypop_indexer_documents_indexed_total{result=\"stale\"}")
        .await;
    assert!(stale >= 100.0, "every write was refused as stale ({stale})");
    assert_eq!(
        replayer
            .metric("citypop_indexer_documents_indexed_total{result=\"updated\"}")
            .await,
        0.0
    );
    assert_eq!(
        replayer
            .metric("citypop_indexer_documents_indexed_total{result=\"created\"}")
            .await,
        0.0
    );
    assert_eq!(
        documents(&stack.elasticsearch, &names.alias).await,
        before,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_is_refused_with_a_clear_error() {
    let stack = Stack::from_env();
    let names = Names::unique("recreated");
    let kafka = Kafka::connect(&stack.kafka);
    let expected = index_then_stop(&stack, &names, &kafka, "Again City", 20, 200).await;

    kafka.delete_topic(&names.topic).await;
    let refusing = spawn_refusing(&stack, &names).await;
    for i in 0..5 {
        kafka
            .produce_update(&names.topic, &format!("Again City {i}"), 99_999)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_refuses(&refusing, "the topic was deleted and recreated").await;
    wait_for_index(&stack, &names.alias, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_hides_the_city_and_a_later_update_restores_it() {
    let stack = Stack::from_env();
    let names = Names::unique("delete");
    let kafka = Kafka::connect(&stack.kafka);
    let _indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api(&stack, &names).await;
    let client = ApiClient::of(&api);
    let get = async |expected_status: u16| {
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let reply = client.get_city("lyon", "").await;
            let status = reply.status;
            if status == expected_status {
                return reply.body;
            }
            assert!(
                Instant::now() < deadline,
                "GET /city/lyon stayed {status}, want {expected_status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    kafka.produce_update(&names.topic, "Lyon", 522_250).await;
    assert_eq!(get(200).await["population"], 522_250);
    let (_, deleted_at) = kafka.produce_tombstone(&names.topic, "Lyon").await;
    get(404).await;
    let docs = documents(&stack.elasticsearch, &names.alias).await;
    assert_eq!(
        docs["lyon"]["deleted"], true,
        "a soft delete keeps the document"
    );
    assert_eq!(docs["lyon"]["version"], deleted_at);
    kafka.produce_update(&names.topic, "Lyon", 530_000).await;
    assert_eq!(get(200).await["population"], 530_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_topics_the_template_and_the_alias_then_exits() {
    let stack = Stack::from_env();
    let names = Names::unique("setup");
    let kafka = Kafka::connect(&stack.kafka);
    let output =
        citypop_tests::run_indexer_command(&stack, &names, &["setup"], &[], CATCH_UP).await;
    assert!(output.contains("set up"), "{output}");
    assert_eq!(
        kafka.end_offsets(&names.topic).len(),
        12,
        "the main topic has 12 partitions"
    );
    assert_eq!(kafka.end_offsets(&format!("{}.dlq", names.topic)).len(), 1);
    assert_eq!(
        citypop_tests::engine::indexes_behind(&stack.elasticsearch, &names.alias).await,
        [format!("{}-initial", names.alias)]
    );
    let template: Value = reqwest::get(format!(
        "{}/_index_template/{}",
        stack.elasticsearch, names.alias
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let mapping = &template["index_templates"][0]["index_template"]["template"]["mappings"];
    assert_eq!(mapping["dynamic"], "strict", "{template}");
    assert_eq!(mapping["properties"]["population"]["type"], "long");
    // Setting up twice is harmless.
    citypop_tests::run_indexer_command(&stack, &names, &["setup"], &[], CATCH_UP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_coalesced_to_the_newest_update_of_each_city() {
    const CITIES: usize = 10;
    const UPDATES: usize = 2000;
    let stack = Stack::from_env();
    let names = Names::unique("coalesce");
    let kafka = Kafka::connect(&stack.kafka);
    citypop_tests::run_indexer_command(&stack, &names, &["setup"], &[], CATCH_UP).await;
    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Busy City",
        CITIES,
        UPDATES,
        0,
    )
    .await;

    // The whole backlog is waiting when the indexer starts: a batch (10,000 events
    // by default) holds many updates of each city, and only the newest is written.
    let indexer = spawn_indexer(&stack, &names).await;
    wait_for_index(&stack, &names.alias, &expected).await;
    wait_for_metric(
        &indexer,
        "citypop_indexer_events_consumed_total",
        UPDATES as f64,
    )
    .await;
    let mut written = 0.0;
    for result in ["created", "updated", "stale"] {
        written += indexer
            .metric(&format!(
                "citypop_indexer_documents_indexed_total{{result=\"{result}\"}}"
            ))
            .await;
    }
    assert!(
        written >= CITIES as f64 && written <= (UPDATES / 10) as f64,
        "{written} documents written for {UPDATES} updates of {CITIES} cities"
    );
}

/// An alias over two indexes with neither marked as the write index refuses every
/// document with `400 illegal_argument_exception`: the engine's set-up is wrong, not
/// the documents. Nothing may be dead-lettered; the indexer stops being ready and
/// retries until the alias is fixed, then indexes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_without_a_write_index_is_retried_never_dead_lettered() {
    let stack = Stack::from_env();
    let names = Names::unique("no-write-index");
    let kafka = Kafka::connect(&stack.kafka);
    let indexer = spawn_indexer(&stack, &names).await;
    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Alias City",
        100,
        500,
        1_000,
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;

    let second = format!("{}-second", names.alias);
    create_index(&stack.elasticsearch, &second).await;
    update_aliases(
        &stack.elasticsearch,
        serde_json::json!([{"add": {"index": second, "alias": names.alias}}]),
    )
    .await;
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Alias City",
        100,
        500,
        2_000,
    )
    .await;
    let broken_at = Instant::now();
    let mut saw_not_ready = false;
    while broken_at.elapsed() < Duration::from_secs(10) {
        saw_not_ready |= indexer.readiness().await == 503;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        saw_not_ready,
        "/readyz answered 503 while nothing could be written"
    );
    assert!(
        kafka.read_all(&format!("{}.dlq", names.topic)).is_empty(),
        "an engine set-up error dead-lettered documents"
    );

    update_aliases(
        &stack.elasticsearch,
        serde_json::json!([{"remove": {"index": second, "alias": names.alias}}]),
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;
    assert!(kafka.read_all(&format!("{}.dlq", names.topic)).is_empty());
    // The index can be whole before the indexer is ready: two failing batches may
    // each hold every city (seen in CI: 328 and 172 events, 100 documents each), and
    // when the newer one's retry lands first the older one's writes, all stale by
    // then, still wait for their next attempt, up to the retry's 30 s cap. The
    // indexer is not ready while a batch it could not write waits; it must be once
    // that attempt has run.
    wait_until_ready(&indexer, "once the alias was fixed").await;
}

/// Poison as large as the broker accepts cannot go to the dead-letter topic whole:
/// its copy with the `citypop.dlq.*` headers is over the limit, a produce error that
/// no retry mends. One such message must not stall the indexer: a poison key copied
/// into the error header is bounded, and a payload too large to copy is recorded as
/// a stub (origin, reason, the payload's size and SHA-256, no payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_too_large_to_dead_letter_whole_never_stalls_the_indexer() {
    use sha2::Digest;
    let stack = Stack::from_env();
    let names = Names::unique("large-poison");
    let kafka = Kafka::connect(&stack.kafka);
    let indexer = spawn_indexer(&stack, &names).await;
    let dlq = format!("{}.dlq", names.topic);

    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Large City",
        50,
        100,
        1_000,
    )
    .await;
    // A key that is no city key: the error that names it quotes it twice.
    let huge_key = "X".repeat(400_000);
    kafka.produce(&names.topic, &huge_key, None, &[]).await;
    // Not Avro, and just under the broker's limit.
    let huge_payload = vec![b'z'; 1_000_000];
    kafka
        .produce(
            &names.topic,
            "large city stub",
            Some(&huge_payload),
            &[("origin", "test")],
        )
        .await;
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Large City",
        50,
        100,
        2_000,
    )
    .await;

    wait_for_index(&stack, &names.alias, &expected).await;
    wait_for_committed(&kafka, &names.group, &names.topic).await;
    let letters = kafka.read_all(&dlq);
    assert_eq!(letters.len(), 2, "one dead letter each");
    for letter in &letters {
        for (name, value) in &letter.headers {
            if name.starts_with("citypop.dlq.") {
                assert!(value.len() <= 1024, "{name} holds {} bytes", value.len());
            }
        }
    }
    let copied = letters
        .iter()
        .find(|l| l.key.as_deref() == Some(huge_key.as_bytes()))
        .expect("the poison with the huge key, copied whole");
    assert_eq!(copied.headers["citypop.dlq.reason"], "decode");
    let stub = letters
        .iter()
        .find(|l| l.key.as_deref() == Some(b"large city stub".as_slice()))
        .expect("the poison with the huge payload");
    assert_eq!(stub.payload, None, "a stub holds no payload");
    assert_eq!(stub.headers["citypop.dlq.stub"], "true");
    assert_eq!(stub.headers["citypop.dlq.reason"], "decode");
    assert_eq!(stub.headers["citypop.dlq.payload_size"], "1000000");
    assert_eq!(
        stub.headers["citypop.dlq.payload_sha256"],
        format!("{:x}", sha2::Sha256::digest(&huge_payload))
    );
    assert_eq!(
        stub.headers["origin"], "test",
        "the original headers are kept"
    );
    assert!(stub.headers["citypop.dlq.offset"].parse::<i64>().is_ok());
    assert_eq!(indexer.readiness().await, 200);
    assert_eq!(
        indexer
            .metric("citypop_indexer_dead_letter_stubs_total")
            .await,
        1.0
    );
}

/// Partitions a member is given while the engine is down must be paused like the
/// ones it had, or it fetches them at full speed into memory; and a member that
/// waits out an outage longer than `max.poll.interval.ms` must stay in its group.
/// Two indexers lose the engine; a third, healthy one joins (a rebalance hands the
/// first two new partitions) while writes go on; then the engine comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_assigned_during_an_outage_stay_paused_and_nothing_is_lost() {
    /// Far below what the cut-off members' partitions receive during the outage:
    /// only what was fetched before a pause may wait in memory.
    const MOST_WAITING: f64 = 4_000.0;
    let stack = Stack::from_env();
    let names = Names::unique("rebalance-outage");
    let kafka = Kafka::connect(&stack.kafka);
    let proxy = FaultProxy::start(stack.engine_host()).await;
    let through_proxy = [
        ("CITYPOP_ELASTICSEARCH_URL", proxy.url()),
        ("CITYPOP_RETRY_MAX_DELAY", "1s".into()),
        ("CITYPOP_ELASTICSEARCH_TIMEOUT", "3s".into()),
        ("CITYPOP_MAX_POLL_INTERVAL", "10s".into()),
        // Small prefetch, so what waits in memory is what was consumed, not what
        // librdkafka had fetched ahead.
        ("CITYPOP_BATCH_MAX_EVENTS", "500".into()),
    ];
    let first = spawn_indexer_with(&stack, &names, &through_proxy, Readiness::Ready).await;
    let second = spawn_indexer_with(&stack, &names, &through_proxy, Readiness::Ready).await;
    let mut expected = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Rebalance City",
        600,
        1200,
        0,
    )
    .await;
    wait_for_index(&stack, &names.alias, &expected).await;

    proxy.cut().await;
    let cut_at = Instant::now();
    load(
        &kafka,
        &names.topic,
        &mut expected,
        "Rebalance City",
        600,
        1200,
        10_000,
    )
    .await;
    let third = spawn_indexer_with(
        &stack,
        &names,
        &[("CITYPOP_MAX_POLL_INTERVAL", "10s".into())],
        Readiness::Ready,
    )
    .await;
    let mut most_waiting: f64 = 0.0;
    let mut chunk = 0;
    // Past the poll interval, with writes arriving all along.
    while cut_at.elapsed() < Duration::from_secs(25) {
        chunk += 1;
        load(
            &kafka,
            &names.topic,
            &mut expected,
            "Rebalance City",
            600,
            10_000,
            100_000 * (chunk + 1),
        )
        .await;
        for member in [&first, &second] {
            most_waiting =
                most_waiting.max(member.metric("citypop_indexer_messages_waiting").await);
        }
    }
    assert!(
        most_waiting <= MOST_WAITING,
        "a cut-off member held {most_waiting} messages: partitions it got during the outage were fetched"
    );
    proxy.restore();
    wait_for_index(&stack, &names.alias, &expected).await;
    wait_for_committed(&kafka, &names.group, &names.topic).await;
    for member in [&first, &second, &third] {
        assert_eq!(member.readiness().await, 200);
        assert!(
            !member.log().contains("max.poll.interval.ms"),
            "a member left its group for not polling"
        );
    }
    assert!(kafka.read_all(&format!("{}.dlq", names.topic)).is_empty());
}

/// Adding partitions to the topic moves cities to other partitions, whose offsets
/// (the versions) do not compare with the ones indexed: the indexer refuses to write
/// and says why, as for a recreated topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_partition_count_changed_is_refused() {
    let stack = Stack::from_env();
    let names = Names::unique("more-partitions");
    let kafka = Kafka::connect(&stack.kafka);
    let expected = index_then_stop(&stack, &names, &kafka, "Moved City", 50, 500).await;

    kafka.add_partitions(&names.topic, 16).await;
    let refusing = spawn_refusing(&stack, &names).await;
    for i in 0..50 {
        kafka
            .produce_update(&names.topic, &format!("Moved City {i}"), 99_999)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_refuses(
        &refusing,
        "has 16 partitions but the index was built from 12",
    )
    .await;
    assert_eq!(
        refusing
            .metric("citypop_indexer_topic_guard{state=\"refusing\"}")
            .await,
        1.0
    );
    wait_for_index(&stack, &names.alias, &expected).await;
}

/// A topic deleted and recreated under the same name, then written to well past
/// the versions the index holds, read by a new consumer group: neither the end
/// offsets nor a committed position tell it apart. Its id does (Kafka 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_with_more_events_than_before_is_told_by_its_id() {
    let stack = Stack::from_env();
    let names = Names::unique("recreated-id");
    let kafka = Kafka::connect(&stack.kafka);
    let expected = index_then_stop(&stack, &names, &kafka, "Reborn City", 12, 24).await;

    kafka.delete_topic(&names.topic).await;
    kafka.create_topic(&names.topic, 12).await;
    let mut ignored = Expected::new();
    load(
        &kafka,
        &names.topic,
        &mut ignored,
        "Reborn City",
        12,
        1200,
        50_000,
    )
    .await;
    let new_group = Names {
        group: format!("{}-new-group", names.group),
        ..names.clone()
    };
    let refusing = spawn_refusing(&stack, &new_group).await;
    assert_refuses(&refusing, "but the index was built from the topic with id").await;
    wait_for_index(&stack, &names.alias, &expected).await;
}

/// `/status` answers what an operator asks first: where each partition stands,
/// whether it is paused, and the last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_committed_offsets_pauses_and_the_last_error() {
    let stack = Stack::from_env();
    let names = Names::unique("status");
    let kafka = Kafka::connect(&stack.kafka);
    let proxy = FaultProxy::start(stack.engine_host()).await;
    let indexer = spawn_indexer_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", proxy.url()),
            ("CITYPOP_RETRY_MAX_DELAY", "1s".into()),
            ("CITYPOP_ELASTICSEARCH_TIMEOUT", "3s".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let status = || async {
        reqwest::get(format!("{}/status", indexer.base_url))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("GET /status")
            .json::<Value>()
            .await
            .expect("status JSON")
    };
    let (partition, offset) = kafka
        .produce_update(&names.topic, "Status City", 1_234)
        .await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let now = status().await;
        let row = now["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .find(|p| p["partition"] == partition)
            .cloned()
            .unwrap_or_default();
        if row["committed"].as_i64().is_some_and(|c| c > offset) {
            assert_eq!(row["paused"], false);
            assert_eq!(now["ready"], true);
            assert_eq!(now["group"], names.group.as_str());
            assert!(now["member_id"].as_str().is_some_and(|id| !id.is_empty()));
            assert_eq!(now["guard"], "matches");
            assert!(now["indexed_since_start"].as_u64() >= Some(1));
            assert_eq!(now["partitions"].as_array().map(Vec::len), Some(12));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partition {partition} never committed past {offset}: {now}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    proxy.cut().await;
    kafka
        .produce_update(&names.topic, "Status City", 5_678)
        .await;
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let now = status().await;
        let all_paused = now["partitions"]
            .as_array()
            .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["paused"] == true));
        if all_paused && now["last_error"]["stage"] == "bulk" {
            assert_eq!(now["ready"], false);
            assert!(
                now["last_error"]["error"]
                    .as_str()
                    .is_some_and(|e| !e.is_empty()),
                "{now}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never paused with an error: {now}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The same, for a person.
    let table = std::process::Command::new(citypop_tests::binary_path("indexer"))
        .args(["status", "--url", &indexer.base_url])
        .output()
        .expect("running indexer status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("ready: no"), "{table}");
    assert!(table.contains("last error: bulk at"), "{table}");
    assert!(table.contains("partition"), "{table}");
    proxy.restore();
}

/// Indexes `count` updates over `cities` cities named after `prefix` with an indexer
/// of its own, then stops it: the index that a changed topic must leave alone.
async fn index_then_stop(
    stack: &Stack,
    names: &Names,
    kafka: &Kafka,
    prefix: &str,
    cities: usize,
    count: usize,
) -> Expected {
    let first = spawn_indexer(stack, names).await;
    let mut expected = Expected::new();
    load(kafka, &names.topic, &mut expected, prefix, cities, count, 0).await;
    wait_for_index(stack, &names.alias, &expected).await;
    drop(first);
    expected
}

/// Starts an indexer on a topic its index was not built from, and waits until the
/// guard refuses it.
async fn spawn_refusing(stack: &Stack, names: &Names) -> Service {
    let refusing = spawn_indexer_with(stack, names, &[], Readiness::Live).await;
    wait_for_metric(&refusing, "citypop_indexer_topic_recreated", 1.0).await;
    refusing
}

/// The refusal shows: not ready, and the log says `why`.
async fn assert_refuses(refusing: &Service, why: &str) {
    assert_eq!(refusing.readiness().await, 503);
    assert!(
        refusing.log().contains(why),
        "the log says why: {}",
        refusing.log()
    );
}

/// Every partition an indexer is given is read, however its start lines up with its
/// first assignment. A fresh indexer holds its partitions (pauses them) until the
/// recreated-topic guard has its first answer, and librdkafka drops a partition's
/// fetch start when the application pauses or resumes that partition while the
/// assignment is starting it: the partition then stays assigned, unpaused and
/// unread for good, with no error anywhere (found by CI: partition 1 of 12 never
/// read in the bench's smoke run, its fetch state "none"). The moment is too short
/// to meet on demand, so besides reading every partition of several fresh members,
/// the test checks the consumer's own account of its pauses: every one is made
/// before its partitions are assigned, none after, until the guard lets them flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_is_read_by_fresh_members() {
    // Enough partitions that the fetch starts take a while; the topics are deleted
    // after, since every engine pass runs this on the same broker.
    const PARTITIONS: usize = 96;
    const MEMBERS: usize = 3;
    let stack = Stack::from_env();
    let kafka = Kafka::connect(&stack.kafka);
    let many = [("CITYPOP_TOPIC_PARTITIONS", PARTITIONS.to_string())];
    let settings = [
        many[0].clone(),
        (
            "CITYPOP_LOG",
            "info,citypop_indexer::consumer=debug".to_owned(),
        ),
    ];
    for member in 0..MEMBERS {
        // A topic and group of its own each time: a fresh member of a fresh group,
        // as the indexer starts on a new deployment.
        let names = Names::unique("every-partition");
        citypop_tests::run_indexer_command(
            &stack,
            &names,
            &["setup"],
            &many,
            Duration::from_secs(120),
        )
        .await;
        let mut expected = Expected::new();
        load(
            &kafka,
            &names.topic,
            &mut expected,
            "Every Partition",
            PARTITIONS * 20,
            PARTITIONS * 20,
            0,
        )
        .await;
        let indexer = spawn_indexer_with(&stack, &names, &settings, Readiness::Ready).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ends = kafka.end_offsets(&names.topic);
            let committed = kafka.committed(&names.group, &names.topic);
            let unread: Vec<i32> = ends
                .iter()
                .filter(|&(partition, end)| *end > 0 && committed.get(partition) != Some(end))
                .map(|(partition, _)| *partition)
                .collect();
            if unread.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fresh member {member}: partitions {unread:?} of {PARTITIONS} never read to their end \
                 within 60 s (committed there: {:?})",
                unread.iter().map(|p| committed.get(p)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // And the gauge that would tell an operator of such a partition says none.
        let metrics = reqwest::get(format!("{}/metrics", indexer.base_url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        assert!(
            metrics
                .lines()
                .any(|line| line == "citypop_indexer_partitions_unfetched 0"),
            "fresh member {member}: no citypop_indexer_partitions_unfetched 0 in /metrics"
        );
        let log = without_colours(&indexer.log());
        let after_assign: Vec<&str> = log
            .lines()
            .skip_while(|line| !line.contains("partitions assigned"))
            .take_while(|line| !line.contains("paused=false"))
            .filter(|line| line.contains("consumption paused state set"))
            .collect();
        assert!(
            log.contains("partitions assigned") && after_assign.is_empty(),
            "fresh member {member} paused partitions after they were assigned, \
             while librdkafka may be starting their fetchers: {after_assign:#?}"
        );
        indexer.kill();
        kafka.delete_topic(&names.topic).await;
    }
}

/// `text` without the terminal colour codes of the services' logs.
fn without_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence runs to its final letter (`m` for colours).
            for end in chars.by_ref() {
                if end.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// An indexer with nothing to read costs next to no CPU. rust-rdkafka's producer
/// polls its queue in a thread of its own, in 100 ms waits whose last millisecond
/// spins (the time left rounds down to a 0 ms poll): about 1% of a core, for as long
/// as the producer lives, in every indexer, though most never write a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_indexer_spends_next_to_no_cpu() {
    let stack = Stack::from_env();
    let names = Names::unique("idle-cpu");
    let indexer = spawn_indexer(&stack, &names).await;
    // Past its start-up: the index, the group's assignment, the guard's verdict.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = cpu_time(indexer.pid()).expect("the indexer runs");
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let spent = cpu_time(indexer.pid()).expect("the indexer runs") - before;
    // Measured here (the tests' debug build): 20-30 ms in 10 s, and 110 ms with the
    // dead-letter producer made at start.
    assert!(
        spent <= window / 200,
        "an idle indexer spent {spent:?} of CPU in {window:?} (at most {:?} expected)",
        window / 200
    );
}
