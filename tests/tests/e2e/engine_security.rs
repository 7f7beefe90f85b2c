//! Engine security end to end, against Elasticsearch with its security on: HTTPS with
//! the local stack's CA, users in the file realm and least-privilege roles
//! (`deploy/local/engine/roles.yml`): the indexer may create and write the indexes
//! and manage their alias, producer-api may only read. `make test` runs these in its
//! security pass (`CITYPOP_ENGINE_SECURITY=on`) and skips them in the others; against
//! an engine without security they fail and say how to start one.

use std::time::{Duration, Instant};

use citypop_tests::kafka::Kafka;
use citypop_tests::{
    Names, Readiness, Service, Stack, run_indexer_command, spawn_indexer_with,
    spawn_producer_api_with,
};
use serde_json::{Value, json};

/// The stack's file-realm users (deploy/local/lib/engine.sh), one per role.
const INDEXER_USER: (&str, &str) = ("citypop-indexer", "citypop-indexer-secret");
const READER_USER: (&str, &str) = ("citypop-reader", "citypop-reader-secret");
/// How long an admin command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write may take from the 202 to a read.
const READ_WAIT_MS: u32 = 10_000;

const HOW_TO_START: &str = "the engine security tests need Elasticsearch with security on: \
start the stack with `CITYPOP_ENGINE_SECURITY=on deploy/local/stack.sh up` and export what it \
prints (ELASTICSEARCH_URL=https://…, ELASTICSEARCH_CA_FILE, ELASTICSEARCH_USERNAME, \
ELASTICSEARCH_PASSWORD), or run `make test`, whose security pass does";

/// The secured engine, and a client of its administrator (a superuser) for what the
/// tests set up and check behind the services' backs.
struct Secured {
    url: String,
    ca_file: String,
    admin: reqwest::Client,
    admin_user: String,
    admin_password: String,
}

impl Secured {
    /// Reads the secured engine's settings; panics with how to start one when they
    /// are missing or the engine lets anonymous requests in.
    async fn from_env(stack: &Stack) -> Self {
        let setting = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: {HOW_TO_START}"))
        };
        let url = stack.elasticsearch.trim_end_matches('/').to_owned();
        assert!(
            url.starts_with("https://"),
            "ELASTICSEARCH_URL {url} is not https: {HOW_TO_START}"
        );
        let ca_file = setting("ELASTICSEARCH_CA_FILE");
        let admin_user = setting("ELASTICSEARCH_USERNAME");
        let admin_password = setting("ELASTICSEARCH_PASSWORD");
        let ca = std::fs::read(&ca_file).unwrap_or_else(|e| panic!("reading {ca_file}: {e}"));
        let ca = reqwest::Certificate::from_pem(&ca)
            .expect("ELASTICSEARCH_CA_FILE holds a PEM certificate");
        let admin = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .expect("an https client");
        let anonymous = admin
            .get(format!("{url}/_cluster/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}/_cluster/health: {e}: {HOW_TO_START}"));
        assert_eq!(
            anonymous.status(),
            401,
            "the engine at {url} answers requests without credentials: {HOW_TO_START}"
        );
        Self {
            url,
            ca_file,
            admin,
            admin_user,
            admin_password,
        }
    }

    /// A request of the administrator.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.admin
            .request(method, format!("{}{path}", self.url))
            .basic_auth(&self.admin_user, Some(&self.admin_password))
    }

    /// Settings for a service that logs in as `user` with `password`.
    fn basic_auth(&self, user: &str, password: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CITYPOP_ELASTICSEARCH_URL", self.url.clone()),
            ("CITYPOP_ELASTICSEARCH_CA_FILE", self.ca_file.clone()),
            ("CITYPOP_ELASTICSEARCH_USERNAME", user.to_owned()),
            ("CITYPOP_ELASTICSEARCH_PASSWORD", password.to_owned()),
        ]
    }

    /// Settings for a service that authenticates with an API key.
    fn api_key(&self, encoded: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CITYPOP_ELASTICSEARCH_URL", self.url.clone()),
            ("CITYPOP_ELASTICSEARCH_CA_FILE", self.ca_file.clone()),
            ("CITYPOP_ELASTICSEARCH_API_KEY", encoded.to_owned()),
        ]
    }

    /// The live documents behind `alias`, by key, as the administrator sees them.
    async fn documents(&self, alias: &str) -> Vec<(String, Value)> {
        self.request(reqwest::Method::POST, &format!("/{alias}/_refresh"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("refreshing {alias}: {e}"));
        let body: Value = self
            .request(reqwest::Method::POST, &format!("/{alias}/_search"))
            .json(&json!({"size": 1000, "query": {"match_all": {}}}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("searching {alias}: {e}"))
            .json()
            .await
            .expect("search answer");
        body["hits"]["hits"]
            .as_array()
            .expect("hits")
            .iter()
            .map(|hit| {
                (
                    hit["_id"].as_str().expect("_id").to_owned(),
                    hit["_source"].clone(),
                )
            })
            .collect()
    }
}

async fn post_city(api: &Service, name: &str, population: i64) -> i64 {
    let written = reqwest::Client::new()
        .post(format!("{}/city", api.base_url))
        .json(&json!({"name": name, "population": population}))
        .send()
        .await
        .expect("POST /city");
    assert_eq!(written.status(), 202);
    let written: Value = written.json().await.expect("the 202 body");
    written["offset"].as_i64().expect("offset")
}

/// Reads `key` through `api`, waiting for `offset`; returns the status and body.
async fn read_city(api: &Service, key: &str, offset: i64) -> (u16, Value) {
    let read = reqwest::get(format!(
        "{}/city/{key}?min_version={offset}&wait_ms={READ_WAIT_MS}",
        api.base_url
    ))
    .await
    .expect("GET /city");
    let status = read.status().as_u16();
    (status, read.json().await.unwrap_or(Value::Null))
}

/// A readiness path of `service` (`readyz`, or producer-api's `readyz/reads` and
/// `readyz/writes`), read whole.
async fn readiness(service: &Service, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{}/{path}", service.base_url))
        .await
        .unwrap_or_else(|e| panic!("GET /{path}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until `log()` holds `needle`; panics after 20 s with the log.
async fn wait_for_log(service: &Service, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = service.log();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log never says {needle:?}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_work_over_https_with_basic_auth_and_least_privilege() {
    let stack = Stack::from_env();
    let engine = Secured::from_env(&stack).await;
    let names = Names::unique("tlsauth");
    let (indexer_user, indexer_password) = INDEXER_USER;
    let (reader_user, reader_password) = READER_USER;
    let mut indexer_settings = engine.basic_auth(indexer_user, indexer_password);
    let mut api_settings = engine.basic_auth(reader_user, reader_password);
    // Everything logged, so a password that leaked into any line would show.
    indexer_settings.push(("CITYPOP_LOG", "debug".into()));
    api_settings.push(("CITYPOP_LOG", "debug".into()));

    // Ready means the indexer set the template, index and alias up over HTTPS as its
    // own user, whose role allows exactly that.
    let indexer = spawn_indexer_with(&stack, &names, &indexer_settings, Readiness::Ready).await;
    let api = spawn_producer_api_with(&stack, &names, &api_settings, Readiness::Ready).await;

    let offset = post_city(&api, "Reykjavík", 139_875).await;
    let (status, city) = read_city(&api, "reykjav%C3%ADk", offset).await;
    assert_eq!(status, 200, "{city}");
    assert_eq!(
        (&city["name"], &city["population"], &city["version"]),
        (&json!("Reykjavík"), &json!(139_875), &json!(offset))
    );

    // The admin commands build their own clients from the same settings.
    let plan = run_indexer_command(
        &stack,
        &names,
        &["replay", "--dry-run"],
        &indexer_settings,
        COMMAND_TIMEOUT,
    )
    .await;
    assert!(plan.contains("dry run"), "{plan}");

    for (what, log) in [
        ("the indexer's log", indexer.log()),
        ("producer-api's log", api.log()),
    ] {
        for secret in [indexer_password, reader_password] {
            assert!(!log.contains(secret), "a password shows in {what}");
        }
    }

    // producer-api's role reads and nothing more: its credentials cannot write a
    // document, create an index or move the alias, however they are used.
    let reader = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&engine.ca_file).expect("the CA"))
                .expect("a PEM CA"),
        )
        .build()
        .expect("an https client");
    let alias = &names.alias;
    let behind: Value = engine
        .request(reqwest::Method::GET, &format!("/_alias/{alias}"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("reading the alias")
        .json()
        .await
        .expect("the alias");
    let index = behind
        .as_object()
        .and_then(|o| o.keys().next())
        .expect("an index behind the alias")
        .clone();
    let attempts = [
        (
            reqwest::Method::PUT,
            format!("/{alias}/_doc/reykjav%C3%ADk"),
            json!({"name": "Overwritten"}),
        ),
        (
            reqwest::Method::PUT,
            format!("/{alias}-by-the-reader"),
            json!({}),
        ),
        (
            reqwest::Method::POST,
            "/_aliases".to_owned(),
            json!({"actions": [{"remove": {"index": index, "alias": alias}}]}),
        ),
    ];
    for (method, path, body) in attempts {
        let answer = reader
            .request(method.clone(), format!("{}{path}", engine.url))
            .basic_auth(reader_user, Some(reader_password))
            .json(&body)
            .send()
            .await
            .expect("a request as the reader");
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        assert_eq!(
            status, 403,
            "{method} {path} as producer-api's user: {text}"
        );
        assert!(text.contains("security_exception"), "{text}");
    }
    let documents = engine.documents(alias).await;
    assert_eq!(documents.len(), 1, "{documents:?}");
    assert_eq!(documents[0].1["name"], "Reykjavík");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_reads_and_writes_out_with_a_clear_error() {
    let stack = Stack::from_env();
    let engine = Secured::from_env(&stack).await;
    let names = Names::unique("tlswrong");
    let (indexer_user, indexer_password) = INDEXER_USER;
    let (reader_user, reader_password) = READER_USER;
    let wrong = "not-the-engine-password";

    // Reads: a producer-api with a wrong password is live but never ready for reads
    // (`/readyz` stays ready: its writes, through Kafka, go on), and its reads fail.
    let indexer = spawn_indexer_with(
        &stack,
        &names,
        &engine.basic_auth(indexer_user, indexer_password),
        Readiness::Ready,
    )
    .await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &engine.basic_auth(reader_user, wrong),
        Readiness::Live,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (status, body) = readiness(&api, "readyz/reads").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["checks"]["elasticsearch"]["status"], "down", "{body}");
        assert_eq!(body["checks"]["kafka"]["status"], "up", "{body}");
        assert_eq!(
            readiness(&api, "readyz").await.0,
            200,
            "writes still served"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let read = reqwest::get(format!("{}/city/oslo", api.base_url))
        .await
        .expect("GET /city");
    assert_eq!(read.status(), 503);
    wait_for_log(&api, "401 Unauthorized").await;
    assert!(
        !api.log().contains(wrong),
        "the password shows in producer-api's log"
    );
    drop(indexer);

    // Writes: an indexer with a wrong password never becomes ready, writes nothing
    // and dead-letters nothing; the events wait in Kafka.
    let bad_indexer = spawn_indexer_with(
        &stack,
        &names,
        &engine.basic_auth(indexer_user, wrong),
        Readiness::Live,
    )
    .await;
    let good_api = spawn_producer_api_with(
        &stack,
        &names,
        &engine.basic_auth(reader_user, reader_password),
        Readiness::Ready,
    )
    .await;
    post_city(&good_api, "Oslo", 709_037).await;
    wait_for_log(&bad_indexer, "401 Unauthorized").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) = readiness(&bad_indexer, "readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(engine.documents(&names.alias).await.is_empty());
    let kafka = Kafka::connect(&stack.kafka);
    let dead_letters = kafka.end_offsets(&format!("{}.dlq", names.topic));
    assert!(
        dead_letters.values().all(|&end| end == 0),
        "dead letters: {dead_letters:?}"
    );
    assert!(
        !bad_indexer.log().contains(wrong),
        "the password shows in the indexer's log"
    );
}

/// API keys live in the engine's `.security` index, which Elasticsearch cannot create
/// on the integ-test-zip (its analysis needs the `analysis-common` module, which the
/// zip lacks and Maven Central does not publish): `POST _security/api_key` answers 400
/// there. What can be shown here: the services send the key the way the engine takes
/// it, `Authorization: ApiKey <encoded>`, and an unknown key keeps everything out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_reaches_the_engine_as_one_and_an_unknown_one_keeps_reads_out() {
    let stack = Stack::from_env();
    let engine = Secured::from_env(&stack).await;
    let names = Names::unique("apikey");
    let (indexer_user, indexer_password) = INDEXER_USER;
    let _indexer = spawn_indexer_with(
        &stack,
        &names,
        &engine.basic_auth(indexer_user, indexer_password),
        Readiness::Ready,
    )
    .await;
    // The encoded form of `citypop-unknown-id:not-a-real-key`.
    let unknown = "Y2l0eXBvcC11bmtub3duLWlkOm5vdC1hLXJlYWwta2V5";
    let api =
        spawn_producer_api_with(&stack, &names, &engine.api_key(unknown), Readiness::Live).await;

    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (status, body) = readiness(&api, "readyz/reads").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["checks"]["elasticsearch"]["status"], "down", "{body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let read = reqwest::get(format!("{}/city/nuuk", api.base_url))
        .await
        .expect("GET /city");
    assert_eq!(read.status(), 503);
    wait_for_log(&api, "401 Unauthorized").await;
    assert!(
        !api.log().contains(unknown),
        "the API key shows in producer-api's log"
    );

    // The engine read the header as an API key and looked the key's id up.
    let answer = engine
        .admin
        .get(format!("{}/_cluster/health", engine.url))
        .header("authorization", format!("ApiKey {unknown}"))
        .send()
        .await
        .expect("GET _cluster/health with the key");
    assert_eq!(answer.status(), 401);
    let text = answer.text().await.unwrap_or_default();
    assert!(
        text.contains("apikey authentication for id citypop-unknown-id"),
        "{text}"
    );
}

/// The classification rule of the indexer: a per-item 403 (a role without rights on
/// the index) is an infrastructure failure, retried like a failed request and never
/// dead-lettered; once the rights are there, everything is indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexer_whose_role_cannot_write_the_index_dead_letters_nothing() {
    let stack = Stack::from_env();
    let engine = Secured::from_env(&stack).await;
    let names = Names::unique("norights");
    let (indexer_user, indexer_password) = INDEXER_USER;
    let rights = engine.basic_auth(indexer_user, indexer_password);
    // The topics, template, first index and alias, made by a user who may.
    run_indexer_command(&stack, &names, &["setup"], &rights, COMMAND_TIMEOUT).await;

    // A replay moved the alias to a new index, which the role of the next indexer
    // does not reach: it may write `<alias>-initial` only (citypop_initial_index_only),
    // so its bulk requests pass and each item is refused with a 403.
    let alias = &names.alias;
    engine
        .request(reqwest::Method::PUT, &format!("/{alias}-replayed"))
        .json(&json!({"settings": {"number_of_replicas": 0}}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("creating the new index");
    engine
        .request(reqwest::Method::POST, "/_aliases")
        .json(&json!({"actions": [
            {"remove": {"index": format!("{alias}-initial"), "alias": alias}},
            {"add": {"index": format!("{alias}-replayed"), "alias": alias, "is_write_index": true}}
        ]}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("moving the alias");
    let mut no_rights = engine.basic_auth("citypop-initial-only", "citypop-initial-only-secret");
    no_rights.extend([
        ("CITYPOP_RETRY_MIN_DELAY", "50ms".to_owned()),
        ("CITYPOP_RETRY_MAX_DELAY", "500ms".to_owned()),
    ]);
    let indexer = spawn_indexer_with(&stack, &names, &no_rights, Readiness::Live).await;
    let kafka = Kafka::connect(&stack.kafka);
    let cities = ["Lima", "Quito", "Bogotá"];
    for (i, city) in cities.iter().enumerate() {
        kafka
            .produce_update(&names.topic, city, 1_000 + i as i64)
            .await;
    }

    // It tries, is refused (403 per item), retries, and never gives an event up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while indexer
        .metric("citypop_indexer_retries_total{reason=\"item\"}")
        .await
        + indexer
            .metric("citypop_indexer_retries_total{reason=\"request\"}")
            .await
        < 3.0
    {
        assert!(
            Instant::now() < deadline,
            "the indexer did not retry the refused writes:\n{}",
            indexer.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for reason in ["decode", "schema", "rejected"] {
        let series = format!("citypop_indexer_dead_letters_total{{reason=\"{reason}\"}}");
        assert_eq!(indexer.metric(&series).await, 0.0, "{series}");
    }
    let dead_letters = kafka.end_offsets(&format!("{}.dlq", names.topic));
    assert!(
        dead_letters.values().all(|&end| end == 0),
        "dead letters: {dead_letters:?}"
    );
    let (status, body) = readiness(&indexer, "readyz").await;
    assert_eq!(
        status, 503,
        "an indexer that cannot write is not ready: {body}"
    );
    assert!(engine.documents(&names.alias).await.is_empty());
    indexer.kill();

    // With the rights, a new indexer of the same group indexes every event: nothing
    // was committed past what was written.
    let indexer = spawn_indexer_with(&stack, &names, &rights, Readiness::Ready).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let documents = engine.documents(&names.alias).await;
        if documents.len() == cities.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "indexed {documents:?}:\n{}",
            indexer.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        kafka
            .end_offsets(&format!("{}.dlq", names.topic))
            .values()
            .all(|&end| end == 0)
    );
}
