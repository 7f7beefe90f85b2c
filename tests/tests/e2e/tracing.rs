//! Traces exported to a real Jaeger: a write's request and produce spans in the
//! caller's trace, and the indexer's bulk span linked to the produce span.
//!
//! The Jaeger binary comes from `make test` (deploy/local/test.sh builds it) through
//! `CITYPOP_JAEGER`; each test starts its own on free ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citypop_tests::api_client::ApiClient;
use citypop_tests::kafka::Kafka;
use citypop_tests::{
    Names, Readiness, Stack, spawn_indexer_with, spawn_producer_api_with, unused_port,
};
use serde_json::{Value, json};

const HOW_TO_GET: &str = "run `make test`, which builds Jaeger, or set CITYPOP_JAEGER to a jaeger \
binary (`. deploy/tools.sh; install_jaeger` from the repository root builds it into \
~/.cache/citypop/tools/jaeger-v1.75.0/jaeger)";

/// How long Jaeger may take to hold what the services exported.
const SETTLE: Duration = Duration::from_secs(60);

const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct Jaeger {
    child: Child,
    query: String,
    otlp_grpc: String,
    otlp_http: String,
    _dir: PathBuf,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Jaeger (all-in-one, in-memory) with every port moved to a free one: run
/// without a configuration it would take the fixed 4317, 4318 and 16686.
async fn spawn_jaeger() -> Jaeger {
    let binary = std::env::var_os("CITYPOP_JAEGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("CITYPOP_JAEGER is not set: {HOW_TO_GET}"));
    assert!(
        binary.exists(),
        "{} is missing: {HOW_TO_GET}",
        binary.display()
    );
    let dir =
        std::env::temp_dir().join(format!("citypop-jaeger-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("creating Jaeger's directory");
    let [query, query_grpc, grpc, http] = [(); 4].map(|_| unused_port());
    // Collector metrics off: they would take the fixed port 8888.
    let config = format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}
  telemetry: {{metrics: {{level: none}}}}
extensions:
  jaeger_query:
    storage: {{traces: mem}}
    http: {{endpoint: 127.0.0.1:{query}}}
    grpc: {{endpoint: 127.0.0.1:{query_grpc}}}
  jaeger_storage:
    backends: {{mem: {{memory: {{max_traces: 10000}}}}}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc}}}
      http: {{endpoint: 127.0.0.1:{http}}}
processors:
  batch: {{timeout: 200ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: mem}}
"
    );
    let config_file = dir.join("jaeger.yaml");
    std::fs::write(&config_file, config).expect("writing jaeger.yaml");
    let log = std::fs::File::create(dir.join("jaeger.log")).expect("the log file");
    let child = Command::new(&binary)
        .arg("--config")
        .arg(&config_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let jaeger = Jaeger {
        child,
        query: format!("http://127.0.0.1:{query}"),
        otlp_grpc: format!("http://127.0.0.1:{grpc}"),
        otlp_http: format!("http://127.0.0.1:{http}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let services = format!("{}/api/services", jaeger.query);
    eventually("Jaeger's query API answers", || async {
        client
            .get(&services)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
    })
    .await;
    jaeger
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn get_json(url: &str, query: &[(&str, &str)]) -> Option<Value> {
    let response = reqwest::Client::new()
        .get(url)
        .query(query)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

/// The names of a Jaeger span's events (its "logs"), in order.
fn event_names(span: &Value) -> Vec<String> {
    span["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|log| {
            log["fields"]
                .as_array()?
                .iter()
                .find(|field| field["key"] == "event")
                .and_then(|field| field["value"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

fn service_of<'a>(trace: &'a Value, span: &Value) -> &'a str {
    let process = span["processID"].as_str().unwrap_or_default();
    trace["processes"][process]["serviceName"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_one_trace_from_request_to_produce_and_the_bulk_span_links_to_it() {
    let jaeger = spawn_jaeger().await;
    let stack = Stack::from_env();
    let names = Names::unique("tracing");
    // Both protocols: the indexer exports over HTTP, producer-api over gRPC.
    let indexer = spawn_indexer_with(
        &stack,
        &names,
        &[
            ("CITYPOP_OTLP_ENDPOINT", jaeger.otlp_http.clone()),
            ("CITYPOP_OTLP_PROTOCOL", "http/protobuf".into()),
            ("CITYPOP_TRACE_SAMPLING_RATIO", "1.0".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_OTLP_ENDPOINT", jaeger.otlp_grpc.clone()),
            ("CITYPOP_TRACE_SAMPLING_RATIO", "1.0".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    let incoming = format!("00-{INCOMING_TRACE}-00f067aa0ba902b7-01");
    let reply = client
        .send(
            client
                .http
                .post(format!("{}/city", client.base))
                .header("traceparent", &incoming)
                .header("tracestate", "citypop=e2e")
                .json(&json!({"name": "Traced", "population": 1_234})),
        )
        .await;
    let (_, partition, offset) = reply.assert_accepted();

    // The event carries the produce span's context in the caller's trace, with the
    // caller's tracestate.
    let kafka = Kafka::connect(&stack.kafka);
    let topic = names.topic.clone();
    let records = tokio::task::spawn_blocking(move || kafka.read_all(&topic))
        .await
        .expect("reading the topic");
    let record = records
        .iter()
        .find(|r| r.partition == partition && r.offset == offset)
        .expect("the event in Kafka");
    let traceparent = &record.headers["traceparent"];
    assert!(
        traceparent.starts_with(&format!("00-{INCOMING_TRACE}-")),
        "{traceparent}"
    );
    assert_eq!(
        record.headers.get("tracestate").map(String::as_str),
        Some("citypop=e2e")
    );
    let produce_span_id = traceparent[36..52].to_owned();

    // One trace, the caller's: the request span (route, status) and the produce span
    // (partition, offset) under it.
    let trace_url = format!("{}/api/traces/{INCOMING_TRACE}", jaeger.query);
    let trace = eventually("the write's trace in Jaeger", || async {
        let body = get_json(&trace_url, &[]).await?;
        let trace = body["data"].get(0)?.clone();
        let spans = trace["spans"].as_array()?;
        let has_request = spans.iter().any(|s| s["operationName"] == "POST /city");
        let has_produce = spans
            .iter()
            .any(|s| s["spanID"] == produce_span_id.as_str());
        (has_request && has_produce).then_some(trace)
    })
    .await;
    let spans = trace["spans"].as_array().expect("spans");
    let request = spans
        .iter()
        .find(|s| s["operationName"] == "POST /city")
        .expect("the request span");
    assert_eq!(service_of(&trace, request), "citypop-producer-api");
    assert_eq!(tag(request, "route"), Some(&json!("/city")), "{request}");
    assert_eq!(
        tag(request, "http.response.status_code"),
        Some(&json!(202)),
        "{request}"
    );
    // The request span is the caller's span's child.
    assert_eq!(
        request["references"][0]["spanID"], "00f067aa0ba902b7",
        "{request}"
    );
    let produce = spans
        .iter()
        .find(|s| s["spanID"] == produce_span_id.as_str())
        .expect("the produce span");
    assert_eq!(produce["operationName"], "kafka.produce");
    assert_eq!(service_of(&trace, produce), "citypop-producer-api");
    assert_eq!(
        produce["references"][0]["spanID"], request["spanID"],
        "{produce}"
    );
    assert_eq!(
        tag(produce, "messaging.destination.partition.id"),
        Some(&json!(partition)),
        "{produce}"
    );
    assert_eq!(
        tag(produce, "messaging.kafka.offset"),
        Some(&json!(offset)),
        "{produce}"
    );

    // The indexer's bulk span, in a trace of its own, links to the produce span.
    let indexer_traces = format!("{}/api/traces", jaeger.query);
    let bulk = eventually(
        "the indexer's bulk span linked to the produce span",
        || async {
            let body = get_json(
                &indexer_traces,
                &[
                    ("service", "citypop-indexer"),
                    ("operation", "indexer.bulk"),
                    ("limit", "100"),
                ],
            )
            .await?;
            body["data"].as_array()?.iter().find_map(|trace| {
                trace["spans"].as_array()?.iter().find_map(|span| {
                    let linked = span["references"].as_array()?.iter().any(|r| {
                        r["traceID"] == INCOMING_TRACE && r["spanID"] == produce_span_id.as_str()
                    });
                    (span["operationName"] == "indexer.bulk" && linked).then(|| span.clone())
                })
            })
        },
    )
    .await;
    assert_ne!(
        bulk["traceID"], INCOMING_TRACE,
        "a link, not a parent: {bulk}"
    );

    // The bulk's parent, the batch span, tells what the batch consumed (decoded and
    // coalesced) and when its offsets went to be committed.
    let batch_trace = format!(
        "{}/api/traces/{}",
        jaeger.query,
        bulk["traceID"].as_str().unwrap()
    );
    let batch = eventually("the batch span with its events", || async {
        let body = get_json(&batch_trace, &[]).await?;
        let span = body["data"][0]["spans"]
            .as_array()?
            .iter()
            .find(|span| span["operationName"] == "indexer.batch")?
            .clone();
        (event_names(&span).len() >= 2).then_some(span)
    })
    .await;
    assert_eq!(
        event_names(&batch),
        ["decoded", "offsets stored for commit"],
        "{batch}"
    );
    drop(indexer);
}
