//! A real Prometheus beside the services, as `CITYPOP_MONITORING=prometheus make run`
//! starts it: it scrapes both, loads the chart's alert rules, every query of the
//! Grafana dashboard returns series, and a frozen engine makes the indexer's
//! not-ready alert pending.
//!
//! The Prometheus binary and the rendered rules come from `make test`
//! (deploy/local/test.sh builds and renders them) through `CITYPOP_PROMETHEUS` and
//! `CITYPOP_PROMETHEUS_RULES`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citypop_tests::api_client::ApiClient;
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::kafka::Kafka;
use citypop_tests::{
    Names, Readiness, Stack, spawn_indexer_with, spawn_producer_api_with, unused_port,
};
use serde_json::Value;

const HOW_TO_GET: &str = "run `make test`, which builds Prometheus and renders the chart's rules, \
or set CITYPOP_PROMETHEUS to a prometheus binary and CITYPOP_PROMETHEUS_RULES to the rules \
(`. deploy/tools.sh; install_prometheus; render_rules FILE` from the repository root)";

const DASHBOARD: &str = include_str!("../../../deploy/grafana/citypop-dashboard.json");

/// How long Prometheus may take to see what the test caused.
const SETTLE: Duration = Duration::from_secs(60);

struct Prometheus {
    child: Child,
    url: String,
    _dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required(variable: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{variable} is not set: {HOW_TO_GET}"));
    assert!(path.exists(), "{} is missing: {HOW_TO_GET}", path.display());
    path
}

/// Starts Prometheus scraping `api` and `indexer` (host:port) every second, with the
/// job and namespace labels the chart's ServiceMonitors give.
async fn spawn_prometheus(api: &str, indexer: &str) -> Prometheus {
    let binary = required("CITYPOP_PROMETHEUS");
    let rules = required("CITYPOP_PROMETHEUS_RULES");
    let dir = std::env::temp_dir().join(format!(
        "citypop-prometheus-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(dir.join("data")).expect("creating Prometheus' directory");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules:?}]
scrape_configs:
  - job_name: citypop-producer-api
    static_configs: [{{targets: [{api:?}], labels: {{namespace: citypop, pod: citypop-producer-api-e2e}}}}]
  - job_name: citypop-indexer
    static_configs: [{{targets: [{indexer:?}], labels: {{namespace: citypop, pod: citypop-indexer-e2e}}}}]
"
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
    let port = unused_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("the log file");
    let child = Command::new(&binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let prometheus = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    eventually("Prometheus ready", || async {
        client
            .get(format!("{}/-/ready", prometheus.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    prometheus
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn api(prometheus: &Prometheus, path: &str, query: &[(&str, &str)]) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", prometheus.url))
        .query(query)
        .send()
        .await
        .expect("asking Prometheus");
    let body: Value = response.json().await.expect("Prometheus answers JSON");
    assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
    body["data"].clone()
}

/// Every `expr` of the dashboard's panels, with its variables set to this stack's.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let expr = expr
                    .replace("$namespace", "citypop")
                    .replace("$producer_job", "citypop-producer-api")
                    .replace("$indexer_job", "citypop-indexer")
                    .replace("$__rate_interval", "1m");
                queries.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
            }
        }
    }
    assert!(!queries.is_empty(), "the dashboard has no query");
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_loads_every_alert_answers_every_panel_and_sees_a_frozen_engine() {
    let stack = Stack::from_env();
    let names = Names::unique("monitoring");
    let engine = FaultProxy::start(stack.engine_host()).await;
    let indexer = spawn_indexer_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", engine.url()),
            ("CITYPOP_ELASTICSEARCH_TIMEOUT", "5s".into()),
            ("CITYPOP_RETRY_MAX_DELAY", "1s".into()),
        ],
        Readiness::Ready,
    )
    .await;
    // producer-api reads through the same proxy, so the outage shows as 503s too.
    let api_service = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_ELASTICSEARCH_URL", engine.url()),
            ("CITYPOP_ENGINE_READ_TIMEOUT", "1s".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api_service);
    let host = |url: &str| url.trim_start_matches("http://").to_owned();
    let prometheus = spawn_prometheus(&host(&api_service.base_url), &host(&indexer.base_url)).await;

    // A short load: writes, reads, an unknown city, and an undecodable event that is
    // dead-lettered.
    let mut last = 0;
    for i in 0..50 {
        let (_, _, offset) = client
            .post_city(&format!("Monitored {i}"), i)
            .await
            .assert_accepted();
        last = offset;
    }
    assert_eq!(client.read_version("Monitored 49", last).await.status, 200);
    assert_eq!(client.get_city("Nowhere Monitored", "").await.status, 404);
    Kafka::connect(&stack.kafka)
        .produce(&names.topic, "garbage", Some(b"not avro"), &[])
        .await;

    // Both targets up.
    eventually("both targets up", || async {
        let targets = api(&prometheus, "/api/v1/targets", &[]).await;
        let active = targets["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        active.len() == 2 && active.iter().all(|t| t["health"] == "up")
    })
    .await;

    // Every alert rule loaded and healthy.
    let rules = api(&prometheus, "/api/v1/rules", &[("type", "alert")]).await;
    let alerts: Vec<&Value> = rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    assert_eq!(alerts.len(), 11, "{rules}");
    eventually("every rule evaluated", || async {
        let rules = api(&prometheus, "/api/v1/rules", &[("type", "alert")]).await;
        rules["groups"][0]["rules"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["health"] == "ok"))
    })
    .await;

    // The engine stops answering, as under SIGSTOP: the indexer's bulk requests time
    // out, it turns not ready, and the alert is pending (its `for` is 5 minutes);
    // producer-api's reads fail with 503.
    engine.freeze();
    client
        .post_city("Frozen Monitored", 1)
        .await
        .assert_accepted();
    assert_eq!(client.get_city("Monitored 1", "").await.status, 503);
    eventually("CitypopIndexerNotReady pending", || async {
        let alerts = api(&prometheus, "/api/v1/alerts", &[]).await;
        alerts["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["labels"]["alertname"] == "CitypopIndexerNotReady" && a["state"] == "pending"
            })
        })
    })
    .await;

    // Every panel's query parses and has series: a counter first seen during the
    // outage (5xx, retries) needs two scrapes before rate() has a value.
    let queries = dashboard_queries();
    let deadline = tokio::time::Instant::now() + SETTLE;
    let empty = loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let data = api(&prometheus, "/api/v1/query", &[("query", expr)]).await;
            if data["result"].as_array().is_none_or(Vec::is_empty) {
                empty.push(format!("{title}: {expr}"));
            }
        }
        if empty.is_empty() || tokio::time::Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    engine.restore();
    assert!(
        empty.is_empty(),
        "panels without a series after {SETTLE:?}:\n{}",
        empty.join("\n")
    );
}
