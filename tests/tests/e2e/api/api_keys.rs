//! API keys on every write route.

use citypop_tests::api_client::ApiClient;
use citypop_tests::{Names, Readiness, Stack, binary_path, spawn_indexer, spawn_producer_api_with};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_writes_and_never_show() {
    let stack = Stack::from_env();
    let names = Names::unique("keys");
    let _indexer = spawn_indexer(&stack, &names).await;
    let key_file = std::env::temp_dir().join(format!("{}.keys", names.topic));
    std::fs::write(&key_file, "# rotated monthly\nfile-key-7f3a\n").unwrap();
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_API_KEYS", " env-key-1b9c , env-key-2d4e".into()),
            ("CITYPOP_API_KEYS_FILE", key_file.display().to_string()),
            // Every request logged, so a key that leaked into a log line would show.
            ("CITYPOP_LOG", "debug".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    let secrets = ["env-key-1b9c", "env-key-2d4e", "file-key-7f3a"];

    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            format!("{}/city", client.base),
            Some(json!({"name": "Oslo", "population": 709_037})),
        ),
        (
            Method::PUT,
            client.city_path("cities", "Oslo"),
            Some(json!({"population": 709_038})),
        ),
        (
            Method::POST,
            format!("{}/cities/bulk", client.base),
            Some(json!([{"name": "Oslo", "population": 709_039}])),
        ),
        (Method::DELETE, client.city_path("city", "Oslo"), None),
    ];
    for (method, url, body) in &writes {
        let request = |key: Option<&str>| {
            let mut request = client.http.request(method.clone(), url);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            request
        };
        for missing in [None, Some("")] {
            let reply = client.send(request(missing)).await;
            reply.assert_problem(401, "missing-api-key");
            assert_eq!(
                reply.header("www-authenticate"),
                Some(r#"ApiKey header="X-API-Key""#)
            );
        }
        for wrong in [
            "env-key-1b9",
            "ENV-KEY-1B9C",
            "env-key-1b9c,env-key-2d4e",
            "nope",
        ] {
            client
                .send(request(Some(wrong)))
                .await
                .assert_problem(403, "wrong-api-key");
        }
        for key in secrets {
            let reply = client.send(request(Some(key))).await;
            assert_eq!(reply.status, 202, "{method} {url}: {}", reply.text);
        }
    }
    // The key is checked before the body: a keyless client learns so, not that its
    // body is malformed.
    let unauthenticated = client
        .send(
            client
                .http
                .post(format!("{}/city", client.base))
                .header("content-type", "text/plain")
                .body("garbage"),
        )
        .await;
    unauthenticated.assert_problem(401, "missing-api-key");

    // Reads stay open.
    assert_eq!(
        client.get_city("Oslo", "").await.status,
        404,
        "deleted last"
    );
    for path in [
        "/cities",
        "/health",
        "/readyz",
        "/livez",
        "/metrics",
        "/openapi.json",
    ] {
        assert_eq!(client.get(path).await.status, 200, "{path}");
    }

    // Keys never appear in the log, nor in --help with them set.
    let log = api.log();
    assert!(
        log.contains("finished processing request"),
        "the requests were logged: {log}"
    );
    for secret in secrets {
        assert!(!log.contains(secret), "a key leaked into the log");
    }
    let help = std::process::Command::new(binary_path("producer-api"))
        .arg("--help")
        .env("CITYPOP_API_KEYS", secrets.join(","))
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("CITYPOP_API_KEYS"), "{help}");
    for secret in secrets {
        assert!(!help.contains(secret), "a key shows in --help: {help}");
    }
    std::fs::remove_file(&key_file).unwrap();
}
