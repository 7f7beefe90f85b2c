//! Each half of the API on its own dependency: an engine outage never stops
//! writes, a Kafka outage never stops reads (`/readyz`, `/readyz/writes`,
//! `/readyz/reads`, and the routes themselves).

use std::time::{Duration, Instant};

use super::assert_unavailable;
use citypop_tests::api_client::{ApiClient, Reply};
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::kafka::Kafka;
use citypop_tests::{Names, Readiness, Stack, spawn_indexer, spawn_producer_api_with, unused_port};

/// The longest a probe may take to answer, whatever a dependency does: Kubernetes
/// counts a slow probe as a failed one.
const PROBE_ANSWERS_WITHIN: Duration = Duration::from_secs(3);

/// Asserts the status of a probe, and that it answered in time.
async fn assert_probe(client: &ApiClient, path: &str, status: u16) -> Reply {
    let reply = client.get(path).await;
    assert_eq!(reply.status, status, "{path}: {}", reply.text);
    assert!(
        reply.elapsed < PROBE_ANSWERS_WITHIN,
        "{path} took {:?}",
        reply.elapsed
    );
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_engine_stops_reads_but_never_writes() {
    let stack = Stack::from_env();
    let names = Names::unique("frozenengine");
    let _indexer = spawn_indexer(&stack, &names).await;
    let engine = FaultProxy::start(stack.engine_host()).await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", engine.url()),
            ("CITYPOP_ELASTICSEARCH_TIMEOUT", "2s".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    let (_, _, offset) = client.post_city("Quito", 2_800_000).await.assert_accepted();
    assert_eq!(client.read_version("quito", offset).await.status, 200);
    for path in ["/readyz", "/readyz/writes", "/readyz/reads"] {
        assert_probe(&client, path, 200).await;
    }

    // The engine stops answering, as a process under SIGSTOP would.
    engine.freeze();
    let ready = assert_probe(&client, "/readyz", 200).await;
    assert_eq!(
        ready.body["checks"]["kafka"]["status"], "up",
        "{}",
        ready.text
    );
    assert_eq!(
        ready.body["checks"]["elasticsearch"]["status"], "down",
        "{}",
        ready.text
    );
    assert_probe(&client, "/readyz/writes", 200).await;
    assert_probe(&client, "/readyz/reads", 503).await;
    let (_, _, later) = client.post_city("Quito", 2_900_000).await.assert_accepted();
    assert!(later > offset);
    client
        .put_city("Guayaquil", 2_700_000)
        .await
        .assert_accepted();
    client.delete_city("Cuenca").await.assert_accepted();
    assert_unavailable(&client.get_city("quito", "").await);
    assert_unavailable(&client.get("/cities").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_stops_writes_but_never_reads() {
    let stack = Stack::from_env();
    let names = Names::unique("kafkadown");
    let _indexer = spawn_indexer(&stack, &names).await;
    let kafka = Kafka::connect(&stack.kafka);
    let (_, offset) = kafka.produce_update(&names.topic, "Lima", 9_750_000).await;
    // Indexed before the API starts, through a Kafka the API never reaches.
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = client.read_version("lima", offset).await;
        if read.status == 200 {
            assert_eq!(read.body["population"], 9_750_000, "{}", read.text);
            break;
        }
        assert!(Instant::now() < deadline, "lima never read: {}", read.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let ready = assert_probe(&client, "/readyz", 200).await;
    assert_eq!(
        ready.body["checks"]["kafka"]["status"], "down",
        "{}",
        ready.text
    );
    assert_eq!(
        ready.body["checks"]["elasticsearch"]["status"], "up",
        "{}",
        ready.text
    );
    assert_probe(&client, "/readyz/reads", 200).await;
    assert_probe(&client, "/readyz/writes", 503).await;
    assert_eq!(client.get("/cities").await.status, 200);
    assert_unavailable(&client.post_city("Lima", 1).await);
}
