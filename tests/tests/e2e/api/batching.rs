//! `GET /city/{name}` gathered into `_mget`s (`CITYPOP_READ_BATCH_WINDOW`): each
//! request still gets its own city, real-time, and its own error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use citypop_tests::api_client::{ApiClient, Reply};
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::{Names, Readiness, Service, Stack, spawn_indexer, spawn_producer_api_with};
use serde_json::json;

use super::assert_unavailable;
use super::key;

/// A window far above a request's own time, so concurrent requests surely meet.
const WINDOW: &str = "5ms";

/// An indexer (which creates the index) and a producer-api with `extra` settings.
async fn start_with(test: &str, extra: &[(&str, String)]) -> (Stack, Names, Service, Service) {
    let stack = Stack::from_env();
    let names = Names::unique(test);
    let indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api_with(&stack, &names, extra, Readiness::Ready).await;
    (stack, names, indexer, api)
}

/// Writes a city straight into the engine, as the indexer does (external version),
/// and returns once the engine acknowledged it; no refresh.
pub async fn index_city(stack: &Stack, names: &Names, name: &str, population: i64, version: i64) {
    let key = key(name);
    let url = format!(
        "{}/{}/_doc/{key}?version={version}&version_type=external",
        stack.elasticsearch.trim_end_matches('/'),
        names.alias
    );
    let document = json!({
        "key": key, "name": name, "population": population,
        "updated_at": "2026-12-04T10:00:00Z", "version": version, "partition": 0,
        "deleted": false,
    });
    reqwest::Client::new()
        .put(url)
        .json(&document)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("indexing {name}: {e}"));
}

/// Reads every name at once, each request on its own task.
async fn read_together(client: &ApiClient, names: &[String]) -> Vec<Reply> {
    let reads: Vec<_> = names
        .iter()
        .map(|name| {
            let (client, name) = (client.clone(), name.clone());
            tokio::spawn(async move { client.get_city(&name, "").await })
        })
        .collect();
    let mut replies = Vec::new();
    for read in reads {
        replies.push(read.await.expect("read task"));
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_distinct_and_equal_names_each_get_their_city() {
    let (stack, names, _indexer, api) = start_with(
        "batchreads",
        &[
            ("CITYPOP_READ_BATCH_WINDOW", WINDOW.into()),
            ("CITYPOP_READ_BATCH_MAX_IDS", "16".into()),
        ],
    )
    .await;
    for i in 0..40 {
        index_city(
            &stack,
            &names,
            &format!("Town {i:02}"),
            1_000 * i + 7,
            100 + i,
        )
        .await;
    }
    let client = ApiClient::of(&api);

    // A third of the reads ask for one city, in different spellings; some ask for
    // cities that do not exist.
    let wanted: Vec<String> = (0..300)
        .map(|j| match j {
            j if j % 3 == 0 => if j % 2 == 0 { "TOWN 05" } else { " town 05 " }.to_owned(),
            j if j % 7 == 0 => format!("Nowhere {j}"),
            j => format!("Town {:02}", j % 40),
        })
        .collect();
    let replies = read_together(&client, &wanted).await;
    for (name, reply) in wanted.iter().zip(&replies) {
        if name.starts_with("Nowhere") {
            reply.assert_problem(404, "not-found");
            continue;
        }
        assert_eq!(reply.status, 200, "{name}: {}", reply.text);
        let i: i64 = key(name)["town ".len()..].parse().expect("a town number");
        assert_eq!(reply.body["key"], key(name), "{name}: {}", reply.text);
        assert_eq!(reply.body["population"], 1_000 * i + 7, "{name}");
        assert_eq!(reply.body["version"], 100 + i, "{name}");
        assert_eq!(
            reply.header("etag"),
            Some(format!("\"{}\"", 100 + i).as_str())
        );
    }

    // The reads went out as batches, none above the most ids, and a city asked for
    // many times in a batch was asked for once.
    let batches = api.metric("citypop_read_batch_ids_count").await;
    let ids = api.metric("citypop_read_batch_ids_sum").await;
    let within_max = api
        .metric(r#"citypop_read_batch_ids_bucket{le="16.0"}"#)
        .await;
    assert!(batches >= 1.0, "no _mget was counted");
    assert!(ids / batches > 1.5, "{ids} ids in {batches} batches");
    assert!(
        ids < 300.0,
        "{ids} ids for 300 reads: equal names were not shared"
    );
    assert!(
        (within_max - batches).abs() < f64::EPSILON,
        "a batch above 16 ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_engine_acknowledged_is_seen_by_the_next_batched_read() {
    let (stack, names, _indexer, api) = start_with(
        "batchrealtime",
        &[("CITYPOP_READ_BATCH_WINDOW", WINDOW.into())],
    )
    .await;
    let client = ApiClient::of(&api);
    index_city(&stack, &names, "Tartu", 0, 1_000).await;

    // Other readers keep batches forming around the checked reads; what they see
    // never goes back in time.
    let stop = Arc::new(AtomicBool::new(false));
    let noise: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.get_city("tartu", "").await;
                    assert_eq!(reply.status, 200, "{}", reply.text);
                    let version = reply.body["version"].as_i64().expect("version");
                    assert!(version >= last, "{version} after {last}");
                    last = version;
                    // Another city in the same batches.
                    client.get_city("Narva", "").await;
                }
            })
        })
        .collect();
    for i in 1..=40 {
        index_city(&stack, &names, "Tartu", i, 1_000 + i).await;
        let reply = client.get_city("TARTU", "").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(
            reply.body["population"], i,
            "write {i} not seen: {}",
            reply.text
        );
        assert_eq!(reply.body["version"], 1_000 + i);
    }
    stop.store(true, Ordering::Relaxed);
    for task in noise {
        task.await.expect("a noise reader failed");
    }
    assert!(api.metric("citypop_read_batch_ids_count").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_outage_gives_each_batched_read_the_documented_503() {
    let stack = Stack::from_env();
    let names = Names::unique("batchoutage");
    let _indexer = spawn_indexer(&stack, &names).await;
    let engine = FaultProxy::start(stack.engine_host()).await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", engine.url()),
            ("CITYPOP_ENGINE_READ_TIMEOUT", "1s".into()),
            ("CITYPOP_READ_BATCH_WINDOW", WINDOW.into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    index_city(&stack, &names, "Vilnius", 588_000, 1).await;
    assert_eq!(client.get_city("vilnius", "").await.status, 200);
    let wanted: Vec<String> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                "Vilnius".into()
            } else {
                format!("Kaunas {i}")
            }
        })
        .collect();

    // Refused connections: every read of the batch gets the 503 it would alone.
    engine.cut().await;
    for reply in read_together(&client, &wanted).await {
        assert_unavailable(&reply);
    }
    // The failed batch left nothing behind: reads work again with the engine.
    engine.restore();
    let replies = read_together(&client, &wanted).await;
    assert_eq!(replies[0].status, 200, "{}", replies[0].text);
    assert_eq!(replies[1].status, 404, "{}", replies[1].text);

    // An engine that stops answering: each read gives up after the read timeout.
    engine.freeze();
    for reply in read_together(&client, &wanted).await {
        assert_unavailable(&reply);
        assert!(
            reply.elapsed < Duration::from_secs(4),
            "{:?}",
            reply.elapsed
        );
    }
}
