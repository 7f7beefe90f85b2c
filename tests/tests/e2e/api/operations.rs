//! `/livez`, `/readyz`, `/health`, `/metrics`, `/openapi.json`, and shutdown.

use std::time::{Duration, Instant};

use citypop_tests::api_client::{ApiClient, PROBLEM_JSON};
use citypop_tests::{Names, Readiness, Stack, spawn_producer_api_with};
use reqwest::Method;
use serde_json::{Value, json};

use super::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi_describe_the_service() {
    let (_stack, names, _indexer, api) = start("ops").await;
    let client = ApiClient::of(&api);

    let live = client.get("/livez").await;
    assert_eq!((live.status, &live.body), (200, &json!({"status": "ok"})));
    let ready = client.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "ready");
    let health = client.get("/health").await;
    assert_eq!(health.status, 200, "{}", health.text);
    // The original API's keys and values, then the detail.
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["elasticsearch"], "connected");
    assert_eq!(health.body["kafka"], "connected");
    let kafka = &health.body["checks"]["kafka"];
    assert_eq!(kafka["status"], "up");
    assert_eq!(kafka["detail"]["topic"], names.topic.as_str());
    assert_eq!(kafka["detail"]["partitions"], 12);
    let engine = &health.body["checks"]["elasticsearch"];
    assert_eq!(engine["status"], "up");
    assert_eq!(engine["detail"]["alias"], names.alias.as_str());
    assert!(["green", "yellow"].contains(&engine["detail"]["cluster_status"].as_str().unwrap()));

    // Metrics, labelled by route template.
    let (_, _, offset) = client
        .post_city("Prague", 1_357_326)
        .await
        .assert_accepted();
    assert_eq!(client.read_version("prague", offset).await.status, 200);
    client
        .get_city("Brno", "")
        .await
        .assert_problem(404, "not-found");
    client
        .get("/no/such/route")
        .await
        .assert_problem(404, "unknown-route");
    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    for series in [
        r#"http_requests_total{method="POST",route="/city",status="202"} 1"#,
        r#"http_requests_total{method="GET",route="/city/{name}",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="/city/{name}",status="404"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"http_request_duration_seconds_count{route="/city/{name}"} 2"#,
        "citypop_publish_duration_seconds_count 1",
        r#"citypop_publish_failures_total{reason="timeout"} 0"#,
        "# TYPE http_request_duration_seconds histogram",
    ] {
        assert!(
            metrics.text.contains(series),
            "{series} missing from\n{}",
            metrics.text
        );
    }
    assert!(
        !metrics.text.contains("/city/prague"),
        "raw paths are not labels"
    );

    // The OpenAPI document has every route of the contract.
    let document = client.get("/openapi.json").await;
    assert_eq!(document.status, 200);
    assert_eq!(document.body["openapi"], "3.1.0");
    for (method, path) in [
        ("post", "/city"),
        ("put", "/cities/{name}"),
        ("post", "/cities/bulk"),
        ("delete", "/city/{name}"),
        ("get", "/city/{name}"),
        ("get", "/cities"),
        ("get", "/livez"),
        ("get", "/readyz"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ] {
        assert!(
            document.body["paths"][path][method].is_object(),
            "{method} {path} is not in the document"
        );
    }
    let get_city = &document.body["paths"]["/city/{name}"]["get"]["responses"];
    for status in ["200", "404", "409", "422", "503"] {
        assert!(
            get_city[status].is_object(),
            "GET /city/{{name}} lacks {status}"
        );
    }
    assert!(get_city["409"]["content"][PROBLEM_JSON].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_0() {
    let (_stack, _names, _indexer, api) = start("sigterm").await;
    let client = ApiClient::of(&api);
    let (_, _, offset) = client
        .post_city("Warsaw", 1_861_975)
        .await
        .assert_accepted();

    // A read-your-writes wait is in flight when the signal comes.
    let in_flight = {
        let http = client.http.clone();
        let url = format!(
            "{}?min_version={}&wait_ms=5000",
            client.city_path("city", "Warsaw"),
            offset + 1_000
        );
        tokio::spawn(async move {
            let response = http.get(url).send().await.expect("the request is answered");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        })
    };
    // Long enough for the request to be in flight, well within its 5 s wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = client.base.clone();
    let signalled = Instant::now();
    let status = api.terminate().await;
    assert!(status.success(), "producer-api exited with {status}");
    // It waited for the request rather than cutting it off.
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
    let (answered, body) = in_flight.await.unwrap();
    assert_eq!(answered, 409, "{body}");
    assert_eq!(body["current_version"], offset);
    // And it no longer accepts connections.
    assert!(reqwest::get(format!("{base}/livez")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_share_one_metrics_label() {
    let stack = Stack::from_env();
    let names = Names::unique("methods");
    // No dependency is needed to answer an unknown method.
    let api = spawn_producer_api_with(&stack, &names, &[], Readiness::Live).await;
    let client = ApiClient::of(&api);
    for i in 0..50 {
        let method = Method::from_bytes(format!("M{i}").as_bytes()).unwrap();
        let reply = client.send(client.request(method, "/city/paris")).await;
        reply.assert_problem(405, "method-not-allowed");
    }
    let metrics = client.get("/metrics").await.text;
    assert!(!metrics.contains(r#"method="M1""#), "{metrics}");
    assert!(
        metrics.contains(
            r#"http_requests_total{method="other",route="/city/{name}",status="405"} 50"#
        ),
        "{metrics}"
    );
}
