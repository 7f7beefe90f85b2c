//! The write routes while Kafka is unreachable, recovering, or slower than the writes.

use std::time::{Duration, Instant};

use super::assert_unavailable;
use citypop_tests::api_client::ApiClient;
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::{Names, Readiness, Stack, spawn_indexer, spawn_producer_api_with, unused_port};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_gives_503_with_retry_after() {
    let stack = Stack::from_env();
    let names = Names::unique("nokafka");
    let publish_timeout = Duration::from_secs(1);
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            (
                "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{}", unused_port()),
            ),
            ("CITYPOP_PUBLISH_TIMEOUT", "1s".into()),
        ],
        Readiness::Live,
    )
    .await;
    let client = ApiClient::of(&api);

    // No indexer has created the alias either, so neither half can serve.
    let ready = client.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.body["checks"]["kafka"]["status"], "down");
    assert_eq!(ready.body["checks"]["elasticsearch"]["status"], "down");
    assert_eq!(client.get("/readyz/writes").await.status, 503);
    let health = client.get("/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(
        (&health.body["status"], &health.body["kafka"]),
        (&json!("error"), &json!("disconnected"))
    );

    let writes = [
        client.post_city("Paris", 1).await,
        client
            .send(
                client
                    .http
                    .put(client.city_path("cities", "Paris"))
                    .json(&json!({"population": 2})),
            )
            .await,
        client.delete_city("Paris").await,
        client
            .post(
                "/cities/bulk",
                &json!([{"name": "Paris", "population": 3}, {"name": "Lyon", "population": 4}]),
            )
            .await,
    ];
    for reply in &writes {
        assert_unavailable(reply);
        assert!(
            reply.elapsed < publish_timeout + Duration::from_millis(1500),
            "a 503 took {:?}, past the publish timeout",
            reply.elapsed
        );
    }
    assert_eq!(writes[3].body["items"][1]["result"], "failed");
    assert_eq!(writes[3].body["items"][1]["status"], 503);
    assert!(
        api.metric(r#"citypop_publish_failures_total{reason="timeout"}"#)
            .await
            >= 5.0
    );
    assert_eq!(
        api.metric(r#"http_requests_total{method="POST",route="/city",status="503"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_recover_when_kafka_comes_back() {
    let stack = Stack::from_env();
    let names = Names::unique("recover");
    let _indexer = spawn_indexer(&stack, &names).await;
    // Kafka behind a line that is cut from the start: the API has never reached it.
    let first_broker = stack.kafka.split(',').next().unwrap().to_owned();
    let proxy = FaultProxy::start(&first_broker).await;
    proxy.cut().await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_KAFKA_BOOTSTRAP_SERVERS", proxy.addr.to_string()),
            ("CITYPOP_PUBLISH_TIMEOUT", "1s".into()),
        ],
        Readiness::Live,
    )
    .await;
    let client = ApiClient::of(&api);
    client
        .post_city("Rome", 1)
        .await
        .assert_problem(503, "unavailable");
    assert_eq!(client.get("/readyz/writes").await.status, 503);
    assert_eq!(client.get("/readyz").await.status, 200, "reads still serve");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    let offset = loop {
        let reply = client.post_city("Rome", 2_761_632).await;
        if reply.status == 202 {
            break reply.assert_accepted().2;
        }
        reply.assert_problem(503, "unavailable");
        assert!(
            Instant::now() < deadline,
            "writes did not recover within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let read = client.read_version("rome", offset).await;
    assert_eq!(read.body["population"], 2_761_632, "{}", read.text);
    assert_eq!(client.get("/readyz/writes").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_gives_503_at_once() {
    let stack = Stack::from_env();
    let names = Names::unique("queuefull");
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            (
                "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{}", unused_port()),
            ),
            ("CITYPOP_PUBLISH_TIMEOUT", "4s".into()),
            ("CITYPOP_PRODUCER_QUEUE_MESSAGES", "1".into()),
        ],
        Readiness::Live,
    )
    .await;
    let client = ApiClient::of(&api);
    // The first write takes the only place in the queue and waits for Kafka...
    let first = {
        let http = client.http.clone();
        let url = format!("{}/city", client.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .json(&json!({"name": "Madrid", "population": 1}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...so the next one is refused at once, not after the publish timeout.
    let second = client.post_city("Madrid", 2).await;
    second.assert_problem(503, "unavailable");
    assert!(second.header("retry-after").is_some());
    assert!(
        second.elapsed < Duration::from_secs(2),
        "{:?}",
        second.elapsed
    );
    assert!(
        second.body["detail"]
            .as_str()
            .unwrap()
            .contains("queue is full"),
        "{}",
        second.text
    );
    let (status, elapsed) = first.await.unwrap();
    assert_eq!(status, 503);
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(
        api.metric(r#"citypop_publish_failures_total{reason="queue_full"}"#)
            .await,
        1.0
    );
}
