//! Security settings end to end: both services and the indexer's admin commands
//! talk to Kafka over the local stack's SASL_PLAINTEXT listener (mechanism PLAIN),
//! and to the engine with HTTP basic auth. The local engines have no security
//! module, so an [`EngineGate`] in front of the engine demands the credentials, as a
//! secured cluster would: every request without the right ones gets a 401.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use citypop_tests::api_client::ApiClient;
use citypop_tests::{
    Names, Readiness, Service, Stack, binary_path, run_indexer_command, spawn_indexer,
    spawn_indexer_with, spawn_producer_api_with,
};
use serde_json::{Value, json};

/// The one user of the stack's SASL listener (deploy/local/stack.sh).
const SASL_USER: &str = "citypop";
const SASL_PASSWORD: &str = "citypop-secret";
/// The user the gate in front of the engine demands.
const ENGINE_USER: &str = "citypop-engine";
const ENGINE_PASSWORD: &str = "engine-pw-5d1e";
/// How long an admin command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The stack's SASL_PLAINTEXT listener: `KAFKA_SASL_BOOTSTRAP_SERVERS` (test.sh
/// exports it), else the stack's default port. Panics with how to get one.
fn sasl_bootstrap() -> String {
    let servers = std::env::var("KAFKA_SASL_BOOTSTRAP_SERVERS")
        .unwrap_or_else(|_| "127.0.0.1:9094".to_owned());
    let first = servers.split(',').next().unwrap_or_default();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "Kafka's SASL listener at {servers} (KAFKA_SASL_BOOTSTRAP_SERVERS) is unreachable: a stack \
         started before deploy/local/stack.sh had one lacks it; restart it with \
         `deploy/local/stack.sh down && deploy/local/stack.sh up` (it listens on \
         CITYPOP_KAFKA_SASL_PORT, default 9094)"
    );
    servers
}

/// Settings for Kafka over SASL_PLAINTEXT/PLAIN, spelled as the Helm chart does.
fn sasl_settings(servers: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CITYPOP_KAFKA_BOOTSTRAP_SERVERS", servers.to_owned()),
        ("CITYPOP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT".into()),
        ("CITYPOP_KAFKA_SASL_MECHANISM", "PLAIN".into()),
        ("CITYPOP_KAFKA_SASL_USERNAME", SASL_USER.into()),
        ("CITYPOP_KAFKA_SASL_PASSWORD", password.to_owned()),
    ]
}

/// Settings for the engine behind `gate`, with basic auth.
fn engine_settings(gate: &EngineGate, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CITYPOP_ELASTICSEARCH_URL", gate.url()),
        ("CITYPOP_ELASTICSEARCH_USERNAME", ENGINE_USER.into()),
        ("CITYPOP_ELASTICSEARCH_PASSWORD", password.to_owned()),
    ]
}

/// What one request to the gate carried.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// It carried an `Authorization` header at all.
    credentials: bool,
    /// They were the right ones.
    authorized: bool,
}

struct Gate {
    upstream: String,
    expected: HeaderValue,
    client: reqwest::Client,
    seen: Mutex<Vec<Seen>>,
}

/// An HTTP proxy in front of the engine that demands `Authorization: Basic` with
/// [`ENGINE_USER`] and [`ENGINE_PASSWORD`]: it forwards requests that carry them and
/// answers the others 401, as Elasticsearch with security on does. It records each
/// request (never the header's value).
struct EngineGate {
    addr: SocketAddr,
    gate: Arc<Gate>,
    server: tokio::task::JoinHandle<()>,
}

impl EngineGate {
    async fn start(upstream: &str) -> Self {
        let expected = format!(
            "Basic {}",
            BASE64.encode(format!("{ENGINE_USER}:{ENGINE_PASSWORD}"))
        );
        let gate = Arc::new(Gate {
            upstream: upstream.trim_end_matches('/').to_owned(),
            expected: HeaderValue::from_str(&expected).expect("a header value"),
            client: reqwest::Client::new(),
            seen: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the gate");
        let addr = listener.local_addr().expect("gate address");
        let router = axum::Router::new().fallback(pass).with_state(gate.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, gate, server }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.gate.seen.lock().expect("gate log").clone()
    }
}

impl Drop for EngineGate {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn pass(State(gate): State<Arc<Gate>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let credentials = parts.headers.get(header::AUTHORIZATION);
    let authorized = credentials == Some(&gate.expected);
    gate.seen.lock().expect("gate log").push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        credentials: credentials.is_some(),
        authorized,
    });
    if !authorized {
        let problem = json!({
            "error": {"type": "security_exception", "reason": "unable to authenticate user"},
            "status": 401
        });
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"security\"")],
            axum::Json(problem),
        )
            .into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = gate
        .client
        .request(parts.method, format!("{}{target}", gate.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if ![header::HOST, header::AUTHORIZATION, header::CONTENT_LENGTH].contains(name) {
            forward = forward.header(name, value);
        }
    }
    let answer = match forward.send().await {
        Ok(answer) => answer,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let Ok(bytes) = answer.bytes().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if ![
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
            header::CONNECTION,
        ]
        .contains(name)
        {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// `/readyz` of `api`, read whole.
async fn readiness(api: &Service) -> (u16, Value) {
    let reply = ApiClient::of(api).get("/readyz").await;
    (reply.status, reply.body)
}

/// Asserts that the readiness of the half that needs `dependency` (`/readyz/writes`
/// for Kafka, `/readyz/reads` for the engine) answers 503, naming it as down, every
/// time it is asked over `period`.
async fn assert_stays_unready(api: &Service, dependency: &str, period: Duration) {
    let half = if dependency == "kafka" {
        "/readyz/writes"
    } else {
        "/readyz/reads"
    };
    let until = Instant::now() + period;
    loop {
        let reply = ApiClient::of(api).get(half).await;
        let (status, body) = (reply.status, reply.body);
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["checks"][dependency]["status"], "down", "{body}");
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn assert_no_secret_in(what: &str, text: &str) {
    for secret in [SASL_PASSWORD, ENGINE_PASSWORD] {
        assert!(!text.contains(secret), "a password shows in {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_and_engine_credentials_carry_a_write_to_a_read() {
    let stack = Stack::from_env();
    let sasl = sasl_bootstrap();
    let names = Names::unique("sasl");
    let gate = EngineGate::start(&stack.elasticsearch).await;
    let mut settings = sasl_settings(&sasl, SASL_PASSWORD);
    settings.extend(engine_settings(&gate, ENGINE_PASSWORD));
    // Everything logged, so a password that leaked into any line would show.
    settings.push(("CITYPOP_LOG", "debug".into()));

    // The indexer creates the topic with the admin client, consumes and reads offsets
    // over SASL, and sets the index up through the gate: ready means all of it worked.
    let indexer = spawn_indexer_with(&stack, &names, &settings, Readiness::Ready).await;
    let api = spawn_producer_api_with(&stack, &names, &settings, Readiness::Ready).await;

    let client = ApiClient::of(&api);
    let (_, _, offset) = client
        .post_city("Reykjavík", 139_875)
        .await
        .assert_accepted();
    let read = client.read_version("reykjavík", offset).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let read = read.body;
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

    // Every request of every client went to the engine with the credentials.
    let seen = gate.seen();
    let refused: Vec<&Seen> = seen.iter().filter(|s| !s.authorized).collect();
    assert!(
        refused.is_empty(),
        "requests without the credentials: {refused:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.path.ends_with("/_bulk")),
        "the indexer wrote nothing through the gate: {seen:?}"
    );

    assert_no_secret_in("the indexer's log", &indexer.log());
    assert_no_secret_in("producer-api's log", &api.log());
    for binary in ["indexer", "producer-api"] {
        let help = std::process::Command::new(binary_path(binary))
            .arg("--help")
            .env("CITYPOP_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
            .env("CITYPOP_ELASTICSEARCH_PASSWORD", ENGINE_PASSWORD)
            .output()
            .expect("running --help");
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("CITYPOP_KAFKA_SASL_PASSWORD"), "{help}");
        assert_no_secret_in(&format!("{binary} --help"), &help);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_keeps_writes_out() {
    let stack = Stack::from_env();
    let sasl = sasl_bootstrap();
    let names = Names::unique("saslwrong");
    // The topic exists (made over plaintext), so only authentication stands in the way.
    let _indexer = spawn_indexer(&stack, &names).await;
    let wrong = "not-the-password";
    let mut settings = sasl_settings(&sasl, wrong);
    settings.push(("CITYPOP_PUBLISH_TIMEOUT", "1s".into()));
    let api = spawn_producer_api_with(&stack, &names, &settings, Readiness::Live).await;

    assert_stays_unready(&api, "kafka", Duration::from_secs(5)).await;
    let (status, body) = readiness(&api).await;
    assert_eq!(status, 200, "reads still serve: {body}");
    assert_eq!(body["checks"]["elasticsearch"]["status"], "up", "{body}");

    let write = ApiClient::of(&api).post_city("Tromsø", 77_544).await;
    write.assert_problem(503, "unavailable");
    assert!(write.header("retry-after").is_some());
    assert_stays_unready(&api, "kafka", Duration::ZERO).await;
    let log = api.log();
    assert!(
        log.contains("SASL authentication error"),
        "the log does not say why Kafka is down: {log}"
    );
    assert!(!log.contains(wrong), "the password shows in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_engine_password_keeps_reads_out() {
    let stack = Stack::from_env();
    let names = Names::unique("enginewrong");
    let _indexer = spawn_indexer(&stack, &names).await;
    let gate = EngineGate::start(&stack.elasticsearch).await;
    let wrong = "not-the-engine-password";
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &engine_settings(&gate, wrong),
        Readiness::Live,
    )
    .await;

    assert_stays_unready(&api, "elasticsearch", Duration::from_secs(3)).await;
    let (status, body) = readiness(&api).await;
    assert_eq!(status, 200, "writes still serve: {body}");
    assert_eq!(body["checks"]["kafka"]["status"], "up", "{body}");
    ApiClient::of(&api)
        .get_city("oslo", "")
        .await
        .assert_problem(503, "unavailable");

    // The credentials were sent, and refused.
    let seen = gate.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|s| s.credentials && !s.authorized),
        "{seen:?}"
    );
    let log = api.log();
    assert!(log.contains("401 Unauthorized"), "{log}");
    assert!(!log.contains(wrong), "the password shows in the log");
}
