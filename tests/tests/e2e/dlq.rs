//! `indexer dlq list` and `indexer dlq redrive`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use citypop_schemas::CityKey;
use citypop_tests::engine::{create_narrow_index, documents};
use citypop_tests::fault_proxy::{FaultProxy, OnRequest};
use citypop_tests::kafka::{Kafka, encode_v2, now_micros};
use citypop_tests::{
    Names, Readiness, Stack, indexer_command_builder, run_indexer_command, spawn_indexer,
    spawn_indexer_with,
};
use serde_json::Value;

use crate::common::{CATCH_UP, SCHEMA_V2, wait_for_committed, wait_for_metric};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_shows_each_dead_letter_with_its_reason_and_origin() {
    let stack = Stack::from_env();
    let names = Names::unique("dlqlist");
    let kafka = Kafka::connect(&stack.kafka);
    create_narrow_index(&stack.elasticsearch, &names.alias).await;
    let indexer = spawn_indexer(&stack, &names).await;

    // key → (reason, partition, offset)
    let mut poison: BTreeMap<String, (&str, i32, i64)> = BTreeMap::new();
    for i in 0..3 {
        for (reason, city, payload) in [
            (
                "decode",
                format!("Broken City {i}"),
                b"not avro at all".to_vec(),
            ),
            (
                "schema",
                format!("Future City {i}"),
                encode_v2(&format!("Future City {i}"), 1),
            ),
            (
                "rejected",
                format!("Huge City {i}"),
                kafka.encode(&format!("Huge City {i}"), 3_000_000_000, now_micros()),
            ),
        ] {
            let key = CityKey::parse(&city).unwrap().as_str().to_owned();
            let (partition, offset) = kafka.produce(&names.topic, &key, Some(&payload), &[]).await;
            poison.insert(key, (reason, partition, offset));
        }
        kafka
            .produce_update(&names.topic, &format!("Fine City {i}"), 10)
            .await;
    }
    wait_for_metric(
        &indexer,
        "citypop_indexer_dead_letters_total{reason=\"rejected\"}",
        3.0,
    )
    .await;

    let listed: Vec<Value> = serde_json::from_str(
        &run_indexer_command(
            &stack,
            &names,
            &["dlq", "list", "--json"],
            &[],
            COMMAND_TIMEOUT,
        )
        .await,
    )
    .unwrap();
    assert_eq!(listed.len(), poison.len(), "{listed:?}");
    for letter in &listed {
        let key = letter["key"].as_str().unwrap();
        let &(reason, partition, offset) = poison
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not poison"));
        assert_eq!(letter["reason"], reason, "{letter}");
        assert_eq!(letter["topic"], names.topic.as_str());
        assert_eq!(letter["partition"], partition);
        assert_eq!(letter["offset"], offset);
        assert!(!letter["error"].as_str().unwrap().is_empty());
        assert!(letter["failed_at"].as_str().unwrap().starts_with("20"));
    }

    let schema_only: Vec<Value> = serde_json::from_str(
        &run_indexer_command(
            &stack,
            &names,
            &["dlq", "list", "--reason", "schema", "--json"],
            &[],
            COMMAND_TIMEOUT,
        )
        .await,
    )
    .unwrap();
    assert_eq!(schema_only.len(), 3);
    assert!(schema_only.iter().all(|l| l["reason"] == "schema"));
    let limited: Vec<Value> = serde_json::from_str(
        &run_indexer_command(
            &stack,
            &names,
            &["dlq", "list", "--limit", "2", "--json"],
            &[],
            COMMAND_TIMEOUT,
        )
        .await,
    )
    .unwrap();
    assert_eq!(limited.len(), 2);
    let table = run_indexer_command(&stack, &names, &["dlq", "list"], &[], COMMAND_TIMEOUT).await;
    assert!(table.contains("9 dead letters"), "{table}");
    assert!(
        table.contains("huge city 0") && table.contains("rejected"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_after_a_schema_fix_indexes_the_dead_letters_exactly_once() {
    const FUTURE: i64 = 5;
    let stack = Stack::from_env();
    let names = Names::unique("redrive");
    let kafka = Kafka::connect(&stack.kafka);
    dead_letter_by_schema(&stack, &names, &kafka, FUTURE).await;
    let _indexer = spawn_indexer_with(&stack, &names, &schema_fix(), Readiness::Ready).await;

    let dry = run_indexer_command(
        &stack,
        &names,
        &["dlq", "redrive", "--dry-run"],
        &[],
        COMMAND_TIMEOUT,
    )
    .await;
    assert!(dry.contains("would redrive 5 "), "{dry}");
    let first =
        run_indexer_command(&stack, &names, &["dlq", "redrive"], &[], COMMAND_TIMEOUT).await;
    assert!(
        first.contains("redriven 5 ") && first.contains("schema 5"),
        "{first}"
    );

    let deadline = Instant::now() + CATCH_UP;
    loop {
        let docs = documents(&stack.elasticsearch, &names.alias).await;
        let indexed = (0..FUTURE)
            .filter(|i| {
                docs.get(&format!("future city {i}"))
                    .is_some_and(|d| d["population"] == 1000 + i)
            })
            .count();
        if indexed == FUTURE as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{indexed} of {FUTURE} redriven events indexed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let second =
        run_indexer_command(&stack, &names, &["dlq", "redrive"], &[], COMMAND_TIMEOUT).await;
    assert!(
        second.contains("redriven 0 "),
        "nothing is redriven twice: {second}"
    );
    let redriven: Vec<_> = kafka
        .read_all(&names.topic)
        .into_iter()
        .filter(|r| r.headers.contains_key("citypop.redriven_from"))
        .collect();
    assert_eq!(redriven.len(), FUTURE as usize);
    for record in redriven {
        assert_eq!(
            record.headers["origin"], "v2-producer",
            "original headers are kept"
        );
        assert!(
            !record.headers.keys().any(|k| k.starts_with("citypop.dlq.")),
            "{:?}",
            record.headers
        );
    }
}

/// The population the index holds for `key`, once the doc reaches `population`, or
/// panics after `CATCH_UP`.
async fn wait_for_population(stack: &Stack, alias: &str, key: &str, population: i64) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let docs = documents(&stack.elasticsearch, alias).await;
        if docs.get(key).is_some_and(|d| d["population"] == population) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{key} never reached {population}: {:?}",
            docs.get(key)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_never_writes_old_over_new_skips_duplicates_and_keeps_key_order() {
    let stack = Stack::from_env();
    let names = Names::unique("redriveorder");
    let kafka = Kafka::connect(&stack.kafka);
    let dlq = format!("{}.dlq", names.topic);
    let indexer = spawn_indexer(&stack, &names).await;

    // paris@a is dead-lettered (a schema the indexer does not know yet), then the
    // newer paris@b is indexed.
    kafka
        .produce(&names.topic, "paris", Some(&encode_v2("Paris", 100)), &[])
        .await;
    // lyon@c and lyon@d are both dead-lettered.
    kafka
        .produce(&names.topic, "lyon", Some(&encode_v2("Lyon", 1)), &[])
        .await;
    kafka
        .produce(&names.topic, "lyon", Some(&encode_v2("Lyon", 2)), &[])
        .await;
    wait_for_metric(
        &indexer,
        "citypop_indexer_dead_letters_total{reason=\"schema\"}",
        3.0,
    )
    .await;
    kafka.produce_update(&names.topic, "Paris", 150).await;
    wait_for_population(&stack, &names.alias, "paris", 150).await;

    // Dead letters written twice (a re-delivered batch), lyon@c's copy after
    // lyon@d's: the DLQ now holds lyon's letters out of origin order.
    let mut lyon: Vec<_> = kafka
        .read_all(&dlq)
        .into_iter()
        .filter(|l| l.key.as_deref() == Some(&b"lyon"[..]))
        .collect();
    assert_eq!(lyon.len(), 2, "{lyon:?}");
    lyon.sort_by_key(|l| l.headers["citypop.dlq.offset"].parse::<i64>().unwrap());
    for letter in [&lyon[1], &lyon[0]] {
        let headers: Vec<(&str, &str)> = letter
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        kafka
            .produce(&dlq, "lyon", letter.payload.as_deref(), &headers)
            .await;
    }
    // Committed, so the fixed indexer does not read them again and index them itself.
    wait_for_committed(&kafka, &names.group, &names.topic).await;
    drop(indexer);

    // The fix: the indexer learns the new schema.
    let schema_dir =
        std::env::temp_dir().join(format!("citypop-schemas-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&schema_dir).unwrap();
    std::fs::write(
        schema_dir.join("city_population_updated.v2.avsc"),
        SCHEMA_V2,
    )
    .unwrap();
    let fixed = [("CITYPOP_SCHEMA_DIR", schema_dir.display().to_string())];
    let indexer = spawn_indexer_with(&stack, &names, &fixed, Readiness::Ready).await;

    let output =
        run_indexer_command(&stack, &names, &["dlq", "redrive"], &[], COMMAND_TIMEOUT).await;
    assert!(
        output.contains("redriven 1 ")
            && output.contains("3 superseded")
            && output.contains("1 duplicates"),
        "only lyon@d is redriven: {output}"
    );
    wait_for_population(&stack, &names.alias, "lyon", 2).await;
    // paris@a would have come before lyon@d: had it been redriven, it is indexed now.
    let docs = documents(&stack.elasticsearch, &names.alias).await;
    assert_eq!(docs["paris"]["population"], 150, "{:?}", docs["paris"]);
    let redriven: Vec<_> = kafka
        .read_all(&names.topic)
        .into_iter()
        .filter(|r| r.headers.contains_key("citypop.redriven_from"))
        .collect();
    assert_eq!(redriven.len(), 1, "{redriven:?}");
    drop(indexer);

    // The topic still holds paris@b as the newest paris: a rebuild agrees.
    run_indexer_command(&stack, &names, &["replay"], &fixed, COMMAND_TIMEOUT).await;
    let docs = documents(&stack.elasticsearch, &names.alias).await;
    assert_eq!(docs["paris"]["population"], 150, "{:?}", docs["paris"]);
    assert_eq!(docs["lyon"]["population"], 2, "{:?}", docs["lyon"]);
}

/// Writes the v2 schema where an indexer can read it: the fix for `schema` dead letters.
/// Writes `count` events in a schema the indexer does not know yet (`Future City
/// <i>`, population 1000 + i) and waits until an indexer has dead-lettered them and
/// committed past them, so the fixed indexer does not read them again itself.
async fn dead_letter_by_schema(stack: &Stack, names: &Names, kafka: &Kafka, count: i64) {
    let indexer = spawn_indexer(stack, names).await;
    for i in 0..count {
        let city = format!("Future City {i}");
        let key = CityKey::parse(&city).unwrap().as_str().to_owned();
        kafka
            .produce(
                &names.topic,
                &key,
                Some(&encode_v2(&city, 1000 + i)),
                &[("origin", "v2-producer")],
            )
            .await;
    }
    wait_for_metric(
        &indexer,
        "citypop_indexer_dead_letters_total{reason=\"schema\"}",
        count as f64,
    )
    .await;
    wait_for_committed(kafka, &names.group, &names.topic).await;
}

/// The engine stops answering in the middle of a redrive (a node restarting, the
/// path to it cut): redrive waits it out, as the live indexer does, instead of
/// ending half done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_waits_out_an_engine_outage() {
    const LETTERS: i64 = 5;
    let stack = Stack::from_env();
    let names = Names::unique("redriveoutage");
    let kafka = Kafka::connect(&stack.kafka);
    dead_letter_by_schema(&stack, &names, &kafka, LETTERS).await;
    let _indexer = spawn_indexer_with(&stack, &names, &schema_fix(), Readiness::Ready).await;

    let proxy = FaultProxy::start(stack.engine_host()).await;
    // Cut at redrive's first read of a dead letter's key from the index.
    let cut = proxy.watch("/_doc/", OnRequest::CutBefore);
    let redrive = indexer_command_builder(
        &stack,
        &names,
        &["dlq", "redrive"],
        &[
            ("CITYPOP_ELASTICSEARCH_URL", proxy.url()),
            ("CITYPOP_RETRY_MAX_DELAY", "1s".into()),
        ],
    )
    .spawn()
    .expect("starting the redrive");
    tokio::time::timeout(COMMAND_TIMEOUT, cut.notified())
        .await
        .expect("redrive never read a key from the index");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, redrive.wait_with_output())
        .await
        .expect("redrive did not finish after the engine came back")
        .expect("the redrive's output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "redrive failed with {}:\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains(&format!("redriven {LETTERS} ")), "{stdout}");
    assert!(
        stderr.contains("retrying"),
        "the outage was waited out, with a warning: {stderr}"
    );
}

fn schema_fix() -> [(&'static str, String); 1] {
    let schema_dir =
        std::env::temp_dir().join(format!("citypop-schemas-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&schema_dir).unwrap();
    std::fs::write(
        schema_dir.join("city_population_updated.v2.avsc"),
        SCHEMA_V2,
    )
    .unwrap();
    [("CITYPOP_SCHEMA_DIR", schema_dir.display().to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redrive_resumes_where_it_stopped() {
    use futures::StreamExt;
    const LETTERS: usize = 1000;
    let stack = Stack::from_env();
    let names = Names::unique("redriveresume");
    let kafka = Kafka::connect(&stack.kafka);
    let dlq = format!("{}.dlq", names.topic);
    let indexer = spawn_indexer(&stack, &names).await;
    futures::stream::iter(0..LETTERS)
        .map(|i| {
            let (kafka, topic) = (&kafka, &names.topic);
            async move {
                let city = format!("Resume City {i}");
                let key = CityKey::parse(&city).unwrap().as_str().to_owned();
                kafka
                    .produce(topic, &key, Some(&encode_v2(&city, i as i64)), &[])
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    wait_for_metric(
        &indexer,
        "citypop_indexer_dead_letters_total{reason=\"schema\"}",
        LETTERS as f64,
    )
    .await;
    wait_for_committed(&kafka, &names.group, &names.topic).await;
    drop(indexer);
    let fixed = schema_fix();
    let _indexer = spawn_indexer_with(&stack, &names, &fixed, Readiness::Ready).await;

    // Killed (as a crash would) once it has committed part of its work.
    let group = format!("{}.redrive.schema", names.group);
    let mut first = indexer_command_builder(
        &stack,
        &names,
        &["dlq", "redrive", "--reason", "schema"],
        &[],
    )
    .spawn()
    .expect("starting the redrive");
    let deadline = Instant::now() + CATCH_UP;
    let stopped_at = loop {
        let committed = kafka.committed(&group, &dlq).get(&0).copied().unwrap_or(0);
        if committed > 0 && committed < LETTERS as i64 {
            first.start_kill().expect("killing the redrive");
            break committed;
        }
        assert!(
            first.try_wait().expect("redrive status").is_none(),
            "the redrive ended without committing part of its progress (committed {committed})"
        );
        assert!(Instant::now() < deadline, "the redrive committed nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.wait().await.expect("the killed redrive");

    let second = run_indexer_command(
        &stack,
        &names,
        &["dlq", "redrive", "--reason", "schema", "--json"],
        &[],
        COMMAND_TIMEOUT,
    )
    .await;
    let counts: Value = serde_json::from_str(&second).unwrap_or_else(|e| panic!("{second}: {e}"));
    assert_eq!(
        counts["examined"],
        LETTERS as i64 - stopped_at,
        "it resumed at {stopped_at}: {counts}"
    );
    // What the killed run republished after its last commit is indexed by now, so the
    // second run finds those superseded rather than republishing them again.
    let redriven = kafka
        .read_all(&names.topic)
        .into_iter()
        .filter(|r| r.headers.contains_key("citypop.redriven_from"))
        .count();
    assert_eq!(
        redriven, LETTERS,
        "each dead letter republished once: {counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stub_dead_letter_is_never_republished_as_a_tombstone() {
    let stack = Stack::from_env();
    let names = Names::unique("redrivestub");
    let kafka = Kafka::connect(&stack.kafka);
    let dlq = format!("{}.dlq", names.topic);
    let _indexer = spawn_indexer(&stack, &names).await;
    let (partition, offset) = kafka.produce_update(&names.topic, "Rome", 2_750_000).await;
    wait_for_population(&stack, &names.alias, "rome", 2_750_000).await;
    // A stub of a later event of rome, as the indexer writes one for a message Kafka
    // could not take whole: the context, no payload.
    let (partition, newer) = (partition.to_string(), (offset + 1).to_string());
    kafka
        .produce(
            &dlq,
            "rome",
            None,
            &[
                ("citypop.dlq.reason", "rejected"),
                ("citypop.dlq.error", "message too large"),
                ("citypop.dlq.topic", names.topic.as_str()),
                ("citypop.dlq.partition", partition.as_str()),
                ("citypop.dlq.offset", newer.as_str()),
                ("citypop.dlq.failed_at", "2026-12-04T00:00:00Z"),
                ("citypop.dlq.stub", "true"),
                ("citypop.dlq.payload_size", "2000000"),
            ],
        )
        .await;
    let output =
        run_indexer_command(&stack, &names, &["dlq", "redrive"], &[], COMMAND_TIMEOUT).await;
    assert!(
        output.contains("redriven 0 ") && output.contains("1 skipped"),
        "{output}"
    );
    let tombstones = kafka
        .read_all(&names.topic)
        .into_iter()
        .filter(|r| r.payload.is_none())
        .count();
    assert_eq!(tombstones, 0, "a stub went back as a delete of rome");
    let docs = documents(&stack.elasticsearch, &names.alias).await;
    assert_eq!(docs["rome"]["deleted"], false, "{:?}", docs["rome"]);
}
