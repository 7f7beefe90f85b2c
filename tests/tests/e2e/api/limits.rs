//! Bounded time and concurrency: slow clients and a hung engine cannot hold the
//! server's connections or requests for long.

use std::time::{Duration, Instant};

use citypop_tests::api_client::ApiClient;
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::{Names, Readiness, Stack, spawn_indexer, spawn_producer_api_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads what the server sends until it closes the connection, or panics after
/// `within`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {within:?}"))
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_bodies_are_cut_off() {
    let stack = Stack::from_env();
    let names = Names::unique("slowclients");
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_HEADER_READ_TIMEOUT", "1s".into()),
            ("CITYPOP_BODY_READ_TIMEOUT", "1s".into()),
        ],
        Readiness::Live,
    )
    .await;
    let addr = api.base_url.trim_start_matches("http://").to_owned();

    // Headers that never end.
    let mut slow_head = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow_head
        .write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    read_until_closed(&mut slow_head, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A body that stops half-way.
    let mut slow_body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /city HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"name\": ",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow_body, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_cannot_hold_reads_nor_every_slot() {
    let stack = Stack::from_env();
    let names = Names::unique("hungengine");
    let _indexer = spawn_indexer(&stack, &names).await;
    let engine = FaultProxy::start(stack.engine_host()).await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", engine.url()),
            ("CITYPOP_ENGINE_READ_TIMEOUT", "2s".into()),
            ("CITYPOP_MAX_CONCURRENT_REQUESTS", "2".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    engine.freeze();

    // A plain read gives up after the read timeout, not the client-wide 30 s.
    let read = client.get_city("paris", "").await;
    read.assert_problem(503, "unavailable");
    assert!(read.elapsed < Duration::from_secs(5), "{:?}", read.elapsed);

    // Two reads hold both slots; a third is shed at once.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_city("paris", "").await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shed = client.get_city("paris", "").await;
    shed.assert_problem(503, "overloaded");
    assert!(shed.header("retry-after").is_some());
    assert!(shed.elapsed < Duration::from_secs(1), "{:?}", shed.elapsed);
    for request in held {
        assert_eq!(request.await.unwrap(), 503);
    }
}
