//! API keys on every write route.

use std::time::{Duration, Instant};

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

    // Reads stay open. The delete came last; the index shows it shortly after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_city("Oslo", "").await.status != 404 {
        assert!(Instant::now() < deadline, "the delete never showed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_file_takes_effect_without_a_restart() {
    let stack = Stack::from_env();
    let names = Names::unique("rotate");
    let _indexer = spawn_indexer(&stack, &names).await;
    // A mounted Secret: the file is a symlink, and an update swaps the symlink.
    let dir = std::env::temp_dir().join(format!("{}-secret", names.topic));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("v1"), "old-key-5e1d\n").unwrap();
    std::os::unix::fs::symlink(dir.join("v1"), dir.join("keys")).unwrap();
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            (
                "CITYPOP_API_KEYS_FILE",
                dir.join("keys").display().to_string(),
            ),
            ("CITYPOP_API_KEYS_RELOAD_INTERVAL", "1s".into()),
        ],
        Readiness::Ready,
    )
    .await;
    let client = ApiClient::of(&api);
    let write = |key: &'static str| {
        let client = client.clone();
        async move {
            client
                .send(
                    client
                        .request(Method::POST, "/city")
                        .header("x-api-key", key)
                        .json(&json!({"name": "Bergen", "population": 1})),
                )
                .await
                .status
        }
    };
    assert_eq!(write("old-key-5e1d").await, 202);
    assert_eq!(write("new-key-9a7c").await, 403);

    std::fs::write(dir.join("v2"), "new-key-9a7c\n").unwrap();
    std::os::unix::fs::symlink(dir.join("v2"), dir.join("keys.next")).unwrap();
    std::fs::rename(dir.join("keys.next"), dir.join("keys")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while write("new-key-9a7c").await != 202 {
        assert!(Instant::now() < deadline, "the new key never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(write("old-key-5e1d").await, 403);

    // Refusals are counted, and logged at most once a while, not once each.
    for _ in 0..20 {
        assert_eq!(write("guessed-key").await, 403);
    }
    assert!(
        api.metric(r#"citypop_api_key_refusals_total{reason="wrong"}"#)
            .await
            >= 22.0
    );
    let logged = api.log().matches("wrong api key").count();
    assert!((1..=2).contains(&logged), "logged {logged} times");
    std::fs::remove_dir_all(&dir).unwrap();
}
