//! Kafka security end to end: both services and the indexer's admin commands talk
//! to Kafka over the local stack's SASL_PLAINTEXT, SSL and SASL_SSL listeners (SASL
//! mechanism PLAIN; TLS with the stack's CA). Engine security is tested against a
//! real secured engine, in `engine_security`.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use citypop_tests::{
    Names, Readiness, Service, Stack, binary_path, run_indexer_command, spawn_indexer,
    spawn_indexer_with, spawn_producer_api_with,
};
use reqwest::header;
use serde_json::{Value, json};

/// The one user of the stack's SASL listener (deploy/local/stack.sh).
const SASL_USER: &str = "citypop";
const SASL_PASSWORD: &str = "citypop-secret";
/// How long an admin command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// One of the stack's secured listeners: `variable` (test.sh exports it from the
/// stack's endpoints), else the stack's default port. Panics with how to get one.
fn listener(variable: &str, default_port: u16) -> String {
    let servers = std::env::var(variable).unwrap_or_else(|_| format!("127.0.0.1:{default_port}"));
    let first = servers.split(',').next().unwrap_or_default();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "Kafka's listener at {servers} ({variable}) is unreachable: a stack started before \
         deploy/local/stack.sh had it lacks it; restart it with `deploy/local/stack.sh down && \
         deploy/local/stack.sh up` and export what `up` prints"
    );
    servers
}

fn sasl_bootstrap() -> String {
    listener("KAFKA_SASL_BOOTSTRAP_SERVERS", 9094)
}

/// The CA of the stack's TLS listeners: `KAFKA_SSL_CA_LOCATION`, else the stack's.
fn ssl_ca() -> String {
    let ca = std::env::var("KAFKA_SSL_CA_LOCATION").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.stack/tls/ca.pem").to_owned()
    });
    assert!(
        std::path::Path::new(&ca).is_file(),
        "the stack's CA {ca} (KAFKA_SSL_CA_LOCATION) is missing: start the stack with \
         `deploy/local/stack.sh up` and export what it prints"
    );
    ca
}

/// Settings for Kafka over `protocol` (SSL, SASL_PLAINTEXT or SASL_SSL), spelled as
/// the Helm chart does.
fn kafka_settings(protocol: &str, servers: &str, password: &str) -> Vec<(&'static str, String)> {
    let mut settings = vec![
        ("CITYPOP_KAFKA_BOOTSTRAP_SERVERS", servers.to_owned()),
        ("CITYPOP_KAFKA_SECURITY_PROTOCOL", protocol.to_owned()),
    ];
    if protocol.starts_with("SASL") {
        settings.extend([
            ("CITYPOP_KAFKA_SASL_MECHANISM", "PLAIN".to_owned()),
            ("CITYPOP_KAFKA_SASL_USERNAME", SASL_USER.to_owned()),
            ("CITYPOP_KAFKA_SASL_PASSWORD", password.to_owned()),
        ]);
    }
    if protocol.ends_with("SSL") {
        settings.push(("CITYPOP_KAFKA_SSL_CA_LOCATION", ssl_ca()));
    }
    settings
}

/// `/readyz/writes` of `api`, read whole: writes need Kafka (reads, and so
/// `/readyz`, may still be served by the engine).
async fn write_readiness(api: &Service) -> (u16, Value) {
    let response = reqwest::get(format!("{}/readyz/writes", api.base_url))
        .await
        .expect("GET /readyz/writes");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Asserts that `/readyz/writes` answers 503, naming `dependency` as down, every
/// time it is asked over `period`.
async fn assert_stays_unready(api: &Service, dependency: &str, period: Duration) {
    let until = Instant::now() + period;
    loop {
        let (status, body) = write_readiness(api).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["checks"][dependency]["status"], "down", "{body}");
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn post_city(api: &Service, name: &str, population: i64) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/city", api.base_url))
        .json(&json!({"name": name, "population": population}))
        .send()
        .await
        .expect("POST /city")
}

fn assert_no_secret_in(what: &str, text: &str) {
    assert!(!text.contains(SASL_PASSWORD), "a password shows in {what}");
}

/// Both services and the admin commands over `protocol` at `servers`: a write is
/// published, consumed, indexed and read back; no password shows in logs or `--help`.
async fn a_write_reaches_a_read_over(protocol: &str, servers: &str, test: &str) {
    let stack = Stack::from_env();
    let names = Names::unique(test);
    let mut settings = kafka_settings(protocol, servers, SASL_PASSWORD);
    // Everything logged, so a password that leaked into any line would show.
    settings.push(("CITYPOP_LOG", "debug".into()));

    // The indexer creates the topic with the admin client, consumes and reads offsets
    // over this listener: ready means all of it worked.
    let indexer = spawn_indexer_with(&stack, &names, &settings, Readiness::Ready).await;
    let api = spawn_producer_api_with(&stack, &names, &settings, Readiness::Ready).await;

    let written = post_city(&api, "Reykjavík", 139_875).await;
    assert_eq!(written.status(), 202);
    let written: Value = written.json().await.expect("the 202 body");
    let offset = written["offset"].as_i64().expect("offset");
    let read = reqwest::get(format!(
        "{}/city/reykjav%C3%ADk?min_version={offset}&wait_ms=10000",
        api.base_url
    ))
    .await
    .expect("GET /city");
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.expect("the city");
    assert_eq!(
        (&read["name"], &read["population"], &read["version"]),
        (&json!("Reykjavík"), &json!(139_875), &json!(offset))
    );

    // The admin commands build their own clients, from the same settings.
    let dead_letters = run_indexer_command(
        &stack,
        &names,
        &["dlq", "list", "--json"],
        &settings,
        COMMAND_TIMEOUT,
    )
    .await;
    let dead_letters: Vec<Value> = serde_json::from_str(&dead_letters).expect("dlq list --json");
    assert!(dead_letters.is_empty(), "{dead_letters:?}");
    let plan = run_indexer_command(
        &stack,
        &names,
        &["replay", "--dry-run"],
        &settings,
        COMMAND_TIMEOUT,
    )
    .await;
    assert!(plan.contains("dry run"), "{plan}");

    assert_no_secret_in("the indexer's log", &indexer.log());
    assert_no_secret_in("producer-api's log", &api.log());
    for binary in ["indexer", "producer-api"] {
        let help = std::process::Command::new(binary_path(binary))
            .arg("--help")
            .env("CITYPOP_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
            .output()
            .expect("running --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("CITYPOP_KAFKA_SASL_PASSWORD"), "{help}");
        assert_no_secret_in(&format!("{binary} --help"), &help);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plaintext_carries_a_write_to_a_read() {
    a_write_reaches_a_read_over("SASL_PLAINTEXT", &sasl_bootstrap(), "sasl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_carries_a_write_to_a_read() {
    let servers = listener("KAFKA_SSL_BOOTSTRAP_SERVERS", 9095);
    a_write_reaches_a_read_over("SSL", &servers, "ssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_carries_a_write_to_a_read() {
    let servers = listener("KAFKA_SASL_SSL_BOOTSTRAP_SERVERS", 9096);
    a_write_reaches_a_read_over("SASL_SSL", &servers, "saslssl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_brokers_certificate_keeps_writes_out() {
    let stack = Stack::from_env();
    let servers = listener("KAFKA_SSL_BOOTSTRAP_SERVERS", 9095);
    let names = Names::unique("sslwrongca");
    let _indexer = spawn_indexer(&stack, &names).await;
    // A CA of its own, which never signed the broker's certificate.
    let other_ca = std::env::temp_dir().join(format!("citypop-other-ca-{}.pem", names.topic));
    std::fs::write(&other_ca, OTHER_CA).expect("writing the other CA");
    let mut settings = kafka_settings("SSL", &servers, SASL_PASSWORD);
    settings.retain(|(name, _)| *name != "CITYPOP_KAFKA_SSL_CA_LOCATION");
    settings.push((
        "CITYPOP_KAFKA_SSL_CA_LOCATION",
        other_ca.display().to_string(),
    ));
    settings.push(("CITYPOP_PUBLISH_TIMEOUT", "1s".into()));
    let api = spawn_producer_api_with(&stack, &names, &settings, Readiness::Live).await;

    assert_stays_unready(&api, "kafka", Duration::from_secs(3)).await;
    let write = post_city(&api, "Tromsø", 77_544).await;
    assert_eq!(write.status(), 503);
    let log = api.log();
    assert!(
        log.contains("certificate verify failed"),
        "the log does not say why Kafka is down: {log}"
    );
    let _ = std::fs::remove_file(other_ca);
}

/// A self-signed CA (`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256
/// -nodes -days 36500 -subj /CN=citypop-test-ca`, key thrown away) that signed nothing.
const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUKVDO4shVvRVj4XHtzm2iKRqIVZwwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPY2l0eXBvcC10ZXN0LWNhMCAXDTI2MTEyODE0MDU1NloYDzIx
MjYxMTA0MTQwNTU2WjAaMRgwFgYDVQQDDA9jaXR5cG9wLXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATw+snsGL4l38Asw1jcntV12/7BOroxVZsKaTXG
ynwqbkbjR2p/GECT2BWG43wQ6/mF0zRakvMIrSqdRwjAR+tlo1MwUTAdBgNVHQ4E
FgQUtsl7GBljM/azvOLNDYLnXe0WIOYwHwYDVR0jBBgwFoAUtsl7GBljM/azvOLN
DYLnXe0WIOYwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAmExR
l3QCjVGnlaOElWWFarZnx/GBTlj4v7Q5OcWn5OgCIALyo6IpmU5yDJeTcnyzrfJY
JY8UAFVqOEPTsc8qNcUR
-----END CERTIFICATE-----
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_keeps_writes_out() {
    let stack = Stack::from_env();
    let sasl = sasl_bootstrap();
    let names = Names::unique("saslwrong");
    // The topic exists (made over plaintext), so only authentication stands in the way.
    let _indexer = spawn_indexer(&stack, &names).await;
    let wrong = "not-the-password";
    let mut settings = kafka_settings("SASL_PLAINTEXT", &sasl, wrong);
    settings.push(("CITYPOP_PUBLISH_TIMEOUT", "1s".into()));
    let api = spawn_producer_api_with(&stack, &names, &settings, Readiness::Live).await;

    assert_stays_unready(&api, "kafka", Duration::from_secs(5)).await;
    let (_, body) = write_readiness(&api).await;
    assert_eq!(body["checks"]["elasticsearch"]["status"], "up", "{body}");

    let write = post_city(&api, "Tromsø", 77_544).await;
    assert_eq!(write.status(), 503);
    assert!(write.headers().contains_key(header::RETRY_AFTER));
    assert_stays_unready(&api, "kafka", Duration::ZERO).await;
    let log = api.log();
    assert!(
        log.contains("SASL authentication error"),
        "the log does not say why Kafka is down: {log}"
    );
    assert!(!log.contains(wrong), "the password shows in the log");
}
