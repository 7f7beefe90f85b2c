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

/// Reads one answer (head and a `content-length` body) from `stream`, or panics
/// with what arrived when the server resets or closes the connection first.
pub(super) async fn read_one_answer(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    request: &str,
) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no whole answer to {request:?} within 5 s: {text:?}"))
            .unwrap_or_else(|e| panic!("reading the answer to {request:?}: {e} after {text:?}"));
        assert!(
            read > 0,
            "closed before the whole answer to {request:?}: {text:?}"
        );
        answer.extend_from_slice(&buffer[..read]);
    }
}

/// POSTs a JSON array of `size` bytes in one chunk of a chunked body, and returns
/// the answer, write errors ignored (the server may answer before the body is sent,
/// and stops reading past what it would read anyway).
async fn chunked_post(base_url: &str, path: &str, size: usize) -> String {
    let addr = base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{size:x}\r\n["
    );
    let body = format!("{}]\r\n0\r\n\r\n", " ".repeat(size - 2));
    stream.write_all(head.as_bytes()).await.expect("send head");
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(body.as_bytes()).await;
    });
    let answer = read_one_answer(&mut reader, &head).await;
    write.abort();
    answer
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
