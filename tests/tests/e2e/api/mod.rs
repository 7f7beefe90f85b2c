//! producer-api's HTTP contract (brief §4, §7) against real Kafka, a real engine and
//! a real indexer, one file per route (or per concern every route shares). All go
//! through the harness's `ApiClient`.

mod api_keys;
mod batching;
mod bulk;
mod caching;
mod delete;
mod errors;
mod get;
mod limits;
mod list;
mod names;
mod operations;
mod readiness;
mod unavailable;
mod upsert;

use std::time::Duration;

use citypop_schemas::CityKey;
use citypop_tests::api_client::Reply;
use citypop_tests::{Names, Service, Stack, spawn_indexer, spawn_producer_api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The key of a valid name.
fn key(name: &str) -> String {
    CityKey::parse(name)
        .expect("a valid name")
        .as_str()
        .to_owned()
}

/// An indexer (which creates the topic and index) and a producer-api, both fresh.
async fn start(test: &str) -> (Stack, Names, Service, Service) {
    let stack = Stack::from_env();
    let names = Names::unique(test);
    let indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api(&stack, &names).await;
    (stack, names, indexer, api)
}

/// POSTs a JSON array of `size` bytes in one chunk of a chunked body, and returns
/// the answer, write errors ignored (the server may stop reading early).
async fn chunked_post(base_url: &str, path: &str, size: usize) -> String {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{size:x}\r\n["
    );
    let body = format!("{}]\r\n0\r\n\r\n", " ".repeat(size - 2));
    let (mut reader, mut writer) = stream.split();
    let write = async {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(body.as_bytes()).await;
    };
    // Whatever arrives until the server closes, or for 10 s.
    let read = async {
        let mut answer = Vec::new();
        let mut buffer = [0; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Ok(read)) = tokio::time::timeout_at(deadline, reader.read(&mut buffer)).await {
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        answer
    };
    let (_, answer) = tokio::join!(write, read);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Asserts a 503 `unavailable` problem that says when to come back.
pub(super) fn assert_unavailable(reply: &Reply) {
    reply.assert_problem(503, "unavailable");
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("retry-after in seconds");
    assert!(retry_after >= 1);
}
