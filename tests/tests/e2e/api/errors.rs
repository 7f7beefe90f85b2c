//! Errors that say the truth: a bug is a 500 and not a 503 to retry forever, a
//! crafted cursor is a 422, a body is judged by its headers before it is read, and
//! health reports never echo a dependency's raw error text.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use citypop_tests::api_client::ApiClient;
use citypop_tests::{Names, Readiness, Stack, spawn_producer_api_with, unused_port};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{read_one_answer, start};

/// Sends a request head and no body, and returns the status line of the answer,
/// which must come without the body ever being sent.
async fn status_before_the_body(base_url: &str, head: &str) -> String {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send head");
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer before the body to {head:?}"))
        .expect("read answer");
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("application/problem+json"),
        "{answer}"
    );
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_judged_by_their_headers_first() {
    let (_stack, _names, _indexer, api) = start("bodyheads").await;
    let too_large = "POST /city HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                     content-length: 100000000\r\n\r\n";
    assert!(
        status_before_the_body(&api.base_url, too_large)
            .await
            .contains(" 413 ")
    );
    let bulk_too_large = "POST /cities/bulk HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                          content-length: 5000000\r\n\r\n";
    assert!(
        status_before_the_body(&api.base_url, bulk_too_large)
            .await
            .contains(" 413 ")
    );
    let not_json = "PUT /cities/paris HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n\
                    content-length: 20\r\n\r\n";
    assert!(
        status_before_the_body(&api.base_url, not_json)
            .await
            .contains(" 415 ")
    );
}

/// A body refused by its headers alone (the answer comes before the body is sent)
/// still arrives afterwards from any client that sent its request in one go. The
/// server must read it and keep the connection: closing with the body unread makes
/// the kernel reset the connection when the body lands, and a client that had not
/// yet read the answer loses it (seen as "connection reset by peer" in reqwest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_refused_by_its_headers_does_not_cost_the_connection() {
    let (_stack, _names, _indexer, api) = start("refusedbody").await;
    let addr = api.base_url.trim_start_matches("http://");
    let body = r#"{"name": "Paris", "population": 1}"#;
    for (head, status) in [
        (
            "POST /city HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain",
            " 415 ",
        ),
        ("POST /cities/bulk HTTP/1.1\r\nhost: x", " 415 "),
        (
            "POST /nope HTTP/1.1\r\nhost: x\r\ncontent-type: application/json",
            " 404 ",
        ),
        (
            "PATCH /city/paris HTTP/1.1\r\nhost: x\r\ncontent-type: application/json",
            " 405 ",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!("{head}\r\ncontent-length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).await.expect("send head");
        let answer = read_one_answer(&mut stream, &head).await;
        assert!(
            answer.lines().next().unwrap_or_default().contains(status),
            "{answer}"
        );
        assert!(
            !answer.to_ascii_lowercase().contains("connection: close"),
            "{head:?} closed its connection: {answer}"
        );
        stream.write_all(body.as_bytes()).await.expect("send body");
        let next = "GET /livez HTTP/1.1\r\nhost: x\r\n\r\n";
        stream
            .write_all(next.as_bytes())
            .await
            .expect("send next request");
        let answer = read_one_answer(&mut stream, next).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "after {head:?}: {answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_cursors_are_refused_with_422() {
    let (_stack, _names, _indexer, api) = start("cursors").await;
    let client = ApiClient::of(&api);
    client.post_city("Accra", 1).await.assert_accepted();
    let cursor = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    for crafted in [
        // A prefix no key could start with, and one far past any key's length.
        cursor(json!({"s": "name", "a": ["a"], "p": "ACCRA"})),
        cursor(json!({"s": "name", "a": ["a"], "p": "a".repeat(40_000)})),
        // A position that is not a key, or far past any key's length.
        cursor(json!({"s": "name", "a": [" Not A Key "]})),
        cursor(json!({"s": "name", "a": ["k".repeat(40_000)]})),
        // Filters out of range, or crossed.
        cursor(json!({"s": "population", "a": [-5, "a"], "min": -1})),
        cursor(json!({"s": "name", "a": ["a"], "min": 9, "max": 8})),
        // Far longer than any cursor this API issues.
        "A".repeat(10_000),
    ] {
        let reply = client.get(&format!("/cities?cursor={crafted}")).await;
        assert_eq!(
            reply.assert_problem(422, "validation"),
            ["cursor"],
            "{}",
            &crafted[..crafted.len().min(80)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_cannot_be_read_is_a_500() {
    let (stack, names, _indexer, api) = start("undecodable").await;
    let client = ApiClient::of(&api);
    let (_, _, offset) = client.post_city("Dakar", 1).await.assert_accepted();
    assert_eq!(client.read_version("dakar", offset).await.status, 200);
    // A document the mapping allows but the API cannot read: no version, no name.
    let written = reqwest::Client::new()
        .put(format!(
            "{}/{}/_doc/broken?refresh=true",
            stack.elasticsearch, names.alias
        ))
        .json(&json!({"key": "broken", "population": 1}))
        .send()
        .await
        .expect("writing a broken document");
    assert!(written.status().is_success(), "{}", written.status());
    let reply = client.get_city("broken", "").await;
    reply.assert_problem(500, "internal");
    assert!(reply.header("retry-after").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_never_echo_dependency_errors() {
    let stack = Stack::from_env();
    let names = Names::unique("healthtext");
    let (kafka_port, engine_port) = (unused_port(), unused_port());
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            (
                "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{kafka_port}"),
            ),
            (
                "CITYPOP_ELASTICSEARCH_URL",
                format!("http://127.0.0.1:{engine_port}"),
            ),
        ],
        Readiness::Live,
    )
    .await;
    let client = ApiClient::of(&api);
    for path in ["/health", "/readyz", "/readyz/writes", "/readyz/reads"] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, 503, "{path}: {}", reply.text);
        for leak in [kafka_port.to_string(), engine_port.to_string()] {
            assert!(
                !reply.text.contains(&leak),
                "{path} shows {leak}: {}",
                reply.text
            );
        }
        assert!(
            reply.body["checks"]["kafka"]["error"].is_string(),
            "{}",
            reply.text
        );
    }
}
