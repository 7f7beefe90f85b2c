//! producer-api's HTTP contract (brief §4, §7) against real Kafka, a real engine and
//! a real indexer: every status code, Unicode spellings of one city, bulk writes,
//! deletes, paging, read-your-writes, API keys, backpressure, trace context,
//! metrics, the OpenAPI document, and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use citypop_schemas::event::{self, Codec};
use citypop_schemas::{CityKey, CityName};
use citypop_tests::fault_proxy::FaultProxy;
use citypop_tests::kafka::{Kafka, now_micros};
use citypop_tests::{
    Names, Readiness, Service, Stack, binary_path, spawn_indexer, spawn_producer_api,
    spawn_producer_api_with, unused_port,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::{Value, json};

const PROBLEM_JSON: &str = "application/problem+json";
/// How long the index's searchable view may take to show a write (refresh is 1 s).
const SEARCH_VISIBLE: Duration = Duration::from_secs(20);
/// The longest read-your-writes wait the API allows.
const MAX_WAIT_MS: u64 = 10_000;

/// One answer, read whole.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
    elapsed: Duration,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem+json answer with this status and problem type, and returns
    /// the fields its `errors` name.
    fn assert_problem(&self, status: u16, kind: &str) -> Vec<String> {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some(PROBLEM_JSON),
            "{}",
            self.text
        );
        assert_eq!(self.body["status"], status, "{}", self.text);
        assert_eq!(
            self.body["type"],
            format!("urn:citypop:problem:{kind}"),
            "{}",
            self.text
        );
        assert!(self.body["title"].is_string() && self.body["detail"].is_string());
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts a 202 of a write and returns its (key, partition, offset).
    fn assert_accepted(&self) -> (String, i32, i64) {
        assert_eq!(self.status, 202, "{}", self.text);
        let event_id = self.body["event_id"].as_str().expect("event_id");
        let event_id = uuid::Uuid::parse_str(event_id).expect("event_id is a uuid");
        assert_eq!(event_id.get_version_num(), 7, "event ids are UUID v7");
        (
            self.body["key"].as_str().expect("key").to_owned(),
            self.body["partition"].as_i64().expect("partition") as i32,
            self.body["offset"].as_i64().expect("offset"),
        )
    }
}

/// A client of one producer-api.
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn of(api: &Service) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: api.base_url.clone(),
        }
    }

    /// `/city/{name}` or `/cities/{name}` with the name as one escaped path segment.
    fn city_path(&self, collection: &str, name: &str) -> String {
        let mut url = Url::parse(&self.base).expect("base url");
        url.path_segments_mut()
            .expect("a base url")
            .push(collection)
            .push(name);
        url.to_string()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let started = Instant::now();
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
            elapsed: started.elapsed(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn post_city(&self, name: &str, population: i64) -> Reply {
        self.post("/city", &json!({"name": name, "population": population}))
            .await
    }

    async fn get_city(&self, name: &str, query: &str) -> Reply {
        self.send(
            self.http
                .get(format!("{}{query}", self.city_path("city", name))),
        )
        .await
    }

    async fn delete_city(&self, name: &str) -> Reply {
        self.send(self.http.delete(self.city_path("city", name)))
            .await
    }

    /// Reads the city once the index holds `version` or later.
    async fn read_version(&self, name: &str, version: i64) -> Reply {
        self.get_city(
            name,
            &format!("?min_version={version}&wait_ms={MAX_WAIT_MS}"),
        )
        .await
    }

    /// Every key of a listing, following `next_cursor` to the end; the first page
    /// takes `query`, the next ones only the cursor.
    async fn list_all(&self, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut reply = self.get(&format!("/cities?{query}")).await;
        loop {
            assert_eq!(reply.status, 200, "{}", reply.text);
            items.extend(reply.body["items"].as_array().expect("items").clone());
            match reply.body["next_cursor"].as_str() {
                Some(cursor) => {
                    let limit = query
                        .split('&')
                        .find(|p| p.starts_with("limit="))
                        .unwrap_or("limit=50");
                    reply = self.get(&format!("/cities?cursor={cursor}&{limit}")).await;
                }
                None => return items,
            }
            assert!(items.len() < 100_000, "paging does not end");
        }
    }

    /// Polls a listing until `done` holds for its keys.
    async fn wait_listing(&self, query: &str, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + SEARCH_VISIBLE;
        loop {
            let keys = keys(&self.list_all(query).await);
            if done(&keys) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: after {SEARCH_VISIBLE:?} /cities?{query} lists {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn keys(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| item["key"].as_str().expect("key").to_owned())
        .collect()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_of_single_requests() {
    let (_stack, _names, _indexer, api) = start("status").await;
    let client = Client::of(&api);

    // 202 with Location, from POST and from PUT.
    let posted = client.post_city("  Paris ", 2_102_650).await;
    let (paris, _, paris_offset) = posted.assert_accepted();
    assert_eq!(paris, "paris");
    assert_eq!(posted.header("location"), Some("/city/paris"));
    let put = client
        .send(
            client
                .http
                .put(client.city_path("cities", "New  York"))
                .json(&json!({"population": 8_258_035})),
        )
        .await;
    let (new_york, _, new_york_offset) = put.assert_accepted();
    assert_eq!(new_york, "new york");
    assert_eq!(put.header("location"), Some("/city/new%20york"));

    // 200, once indexed.
    let read = client.read_version("PARIS", paris_offset).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["name"], "Paris");
    assert_eq!(read.body["key"], "paris");
    assert_eq!(read.body["population"], 2_102_650);
    assert_eq!(read.body["version"], paris_offset);
    assert!(read.body["updated_at"].as_str().unwrap().ends_with('Z'));
    let read = client.read_version("new york", new_york_offset).await;
    assert_eq!(
        read.body["name"], "New  York",
        "the display name keeps its spacing"
    );
    assert_eq!(read.body["population"], 8_258_035);

    // 404.
    client
        .get_city("Atlantis", "")
        .await
        .assert_problem(404, "not-found");

    // 400: malformed JSON.
    let malformed = client
        .send(
            client
                .http
                .post(format!("{}/city", client.base))
                .header("content-type", "application/json")
                .body(r#"{"name": "Paris", "population": "#),
        )
        .await;
    malformed.assert_problem(400, "malformed-json");

    // 413: a body over 64 KiB, even if it were valid.
    let huge = json!({"name": "Paris", "population": 1, "padding": "x".repeat(65 * 1024)});
    client
        .post("/city", &huge)
        .await
        .assert_problem(413, "payload-too-large");

    // 415: not JSON, or no content type at all.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = client
            .http
            .post(format!("{}/city", client.base))
            .body(r#"{"name": "Paris", "population": 1}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        client
            .send(request)
            .await
            .assert_problem(415, "unsupported-media-type");
    }

    // 422: every way a field can be wrong, each named.
    let long_name = "a".repeat(201);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"name": "Paris", "population": 1.5}),
            vec!["population"],
        ),
        (
            json!({"name": "Paris", "population": 1.0}),
            vec!["population"],
        ),
        (
            json!({"name": "Paris", "population": "12"}),
            vec!["population"],
        ),
        (
            json!({"name": "Paris", "population": -1}),
            vec!["population"],
        ),
        (
            json!({"name": "Paris", "population": null}),
            vec!["population"],
        ),
        (
            json!({"name": "Paris", "population": true}),
            vec!["population"],
        ),
        (
            json!({"name": "Paris", "population": 10_000_000_001_i64}),
            vec!["population"],
        ),
        (json!({"name": "Paris"}), vec!["population"]),
        (json!({"population": 1}), vec!["name"]),
        (json!({"name": "", "population": 1}), vec!["name"]),
        (json!({"name": "   ", "population": 1}), vec!["name"]),
        (json!({"name": long_name, "population": 1}), vec!["name"]),
        (json!({"name": "Par\u{7}is", "population": 1}), vec!["name"]),
        (json!({"name": "Par\nis", "population": 1}), vec!["name"]),
        (json!({"name": 7, "population": 1}), vec!["name"]),
        (
            json!({"name": "Paris", "population": 1, "country": "FR"}),
            vec!["country"],
        ),
        (
            json!({"name": null, "population": "x", "id": 1}),
            vec!["id", "name", "population"],
        ),
        (json!([{"name": "Paris", "population": 1}]), vec![""]),
    ];
    for (body, fields) in cases {
        let reply = client.post("/city", &body).await;
        assert_eq!(reply.assert_problem(422, "validation"), fields, "{body}");
    }
    let bad_put = client
        .send(
            client
                .http
                .put(client.city_path("cities", &"b".repeat(201)))
                .json(&json!({"population": 1, "name": "x"})),
        )
        .await;
    assert_eq!(bad_put.assert_problem(422, "validation"), ["name", "name"]);
    client
        .get_city(&"c".repeat(201), "")
        .await
        .assert_problem(422, "validation");

    // The limits are on characters after normalisation: 200 decomposed é are 400
    // code points but 200 characters, and 10 000 000 000 is in range.
    let decomposed = "e\u{301}".repeat(200);
    client
        .post_city(&decomposed, 10_000_000_000)
        .await
        .assert_accepted();
    client.post_city("Zero", 0).await.assert_accepted();

    // DELETE is a 202 without Location.
    let deleted = client.delete_city("Paris").await;
    let (deleted_key, _, delete_offset) = deleted.assert_accepted();
    assert_eq!(deleted_key, "paris");
    assert!(delete_offset > paris_offset);
    assert_eq!(deleted.header("location"), None);

    // Unknown routes and methods are problems too.
    client
        .get("/nope")
        .await
        .assert_problem(404, "unknown-route");
    let patch = client
        .send(
            client
                .http
                .request(Method::PATCH, format!("{}/city/paris", client.base)),
        )
        .await;
    patch.assert_problem(405, "method-not-allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_spellings_are_one_city() {
    let (_stack, _names, _indexer, api) = start("unicode").await;
    let client = Client::of(&api);

    let spellings: &[(&str, &[&str])] = &[
        // Composed and decomposed ã; the key and display name are NFC.
        (
            "s\u{e3}o paulo",
            &["S\u{e3}o Paulo", "Sa\u{303}o Paulo", "SA\u{303}O PAULO"],
        ),
        (
            "z\u{fc}rich",
            &["Z\u{dc}RICH", "z\u{fc}rich", "Zu\u{308}rich"],
        ),
        // İ lower-cases to i + combining dot above; that lower-cased spelling is the
        // same city.
        (
            "i\u{307}stanbul",
            &["\u{130}stanbul", "i\u{307}stanbul", "\u{130}STANBUL"],
        ),
    ];
    for (expected_key, names) in spellings {
        let mut partitions = BTreeSet::new();
        let mut last_offset = -1;
        for (population, name) in names.iter().enumerate() {
            let reply = client.post_city(name, population as i64 + 1).await;
            let (key, partition, offset) = reply.assert_accepted();
            assert_eq!(key, *expected_key, "{name:?}");
            partitions.insert(partition);
            assert!(offset > last_offset, "offsets grow on one key");
            last_offset = offset;
        }
        assert_eq!(
            partitions.len(),
            1,
            "one key, one partition: {partitions:?}"
        );
        // Every spelling reads the one city, which shows the last write, its name
        // stored NFC.
        let last_name = CityName::parse(names[names.len() - 1]).unwrap();
        for name in *names {
            let read = client.read_version(name, last_offset).await;
            assert_eq!(read.status, 200, "{name:?}: {}", read.text);
            assert_eq!(read.body["key"], *expected_key);
            assert_eq!(read.body["population"], names.len() as i64);
            assert_eq!(read.body["name"], last_name.as_str());
        }
    }
    // The Location of a decomposed write is the escaped NFC key.
    let reply = client.post_city("Sa\u{303}o Paulo", 12_325_232).await;
    assert_eq!(reply.header("location"), Some("/city/s%C3%A3o%20paulo"));

    // A prefix is normalised the same way: decomposed upper case finds São Paulo.
    client
        .wait_listing("prefix=SA%CC%83O", "são paulo listed by prefix", |keys| {
            keys == ["s\u{e3}o paulo"]
        })
        .await;
    client
        .wait_listing("prefix=%C4%B0st", "istanbul listed by prefix", |keys| {
            keys == ["i\u{307}stanbul"]
        })
        .await;
    // Three cities, however many spellings were written.
    client
        .wait_listing("limit=1000", "three cities", |keys| keys.len() == 3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_judge_each_item() {
    let (_stack, _names, _indexer, api) = start("bulk").await;
    let client = Client::of(&api);

    let mixed = json!([
        {"name": "Lyon", "population": 522_250},
        {"name": "Marseille", "population": "873k"},
        {"name": "ZÜRICH", "population": 400_000},
        {"name": "Nice", "population": 342_669, "region": "PACA"},
        "Toulouse",
        {"name": "zürich", "population": 443_037},
        {"name": "", "population": -5},
    ]);
    let reply = client.post("/cities/bulk", &mixed).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        (
            reply.body["accepted"].clone(),
            reply.body["rejected"].clone(),
            reply.body["failed"].clone()
        ),
        (json!(3), json!(4), json!(0))
    );
    let items = reply.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    let expected = [
        ("accepted", 202, vec![]),
        ("rejected", 422, vec!["population"]),
        ("accepted", 202, vec![]),
        ("rejected", 422, vec!["region"]),
        ("rejected", 422, vec![""]),
        ("accepted", 202, vec![]),
        ("rejected", 422, vec!["name", "population"]),
    ];
    for (index, (item, (result, status, fields))) in items.iter().zip(&expected).enumerate() {
        assert_eq!(item["index"], index, "{item}");
        assert_eq!(item["result"], *result, "{item}");
        assert_eq!(item["status"], *status, "{item}");
        let named: Vec<&str> = item["errors"]
            .as_array()
            .map(|e| e.iter().map(|e| e["field"].as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(named, *fields, "{item}");
        if *result == "accepted" {
            assert!(
                item["offset"].is_i64() && item["partition"].is_i64(),
                "{item}"
            );
        } else {
            assert!(item.get("offset").is_none(), "{item}");
        }
    }
    // Items of one city keep their order: the later ZÜRICH item wins.
    assert_eq!(items[2]["key"], "zürich");
    assert_eq!(items[2]["partition"], items[5]["partition"]);
    assert!(items[5]["offset"].as_i64() > items[2]["offset"].as_i64());
    let read = client
        .read_version("zu\u{308}rich", items[5]["offset"].as_i64().unwrap())
        .await;
    assert_eq!(read.body["population"], 443_037, "{}", read.text);
    let read = client
        .read_version("lyon", items[0]["offset"].as_i64().unwrap())
        .await;
    assert_eq!(read.body["population"], 522_250, "{}", read.text);

    // Nothing valid: 422, with every error named by index and every item's result.
    let invalid = client
        .post(
            "/cities/bulk",
            &json!([{"name": "A", "population": 1.5}, 7]),
        )
        .await;
    assert_eq!(
        invalid.assert_problem(422, "validation"),
        ["[0].population", "[1]"]
    );
    assert_eq!(invalid.body["items"].as_array().unwrap().len(), 2);
    assert_eq!(invalid.body["items"][1]["result"], "rejected");

    // Not a list, or an empty one.
    for body in [json!({"name": "A", "population": 1}), json!([])] {
        client
            .post("/cities/bulk", &body)
            .await
            .assert_problem(422, "validation");
    }
    // More than 1000 items, or more than 4 MiB.
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("Many {i}"), "population": i}))
        .collect();
    client
        .post("/cities/bulk", &Value::Array(too_many))
        .await
        .assert_problem(413, "payload-too-large");
    let oversized = format!("[{}]", " ".repeat(4 * 1024 * 1024 + 1));
    client
        .send(
            client
                .http
                .post(format!("{}/cities/bulk", client.base))
                .header("content-type", "application/json")
                .body(oversized),
        )
        .await
        .assert_problem(413, "payload-too-large");

    // Exactly 1000 items, over the 64 KiB single-write limit, all accepted.
    let padding = "x".repeat(120);
    let thousand: Vec<Value> = (0..1000)
        .map(|i| json!({"name": format!("Bulk {i} {padding}"), "population": i}))
        .collect();
    let body = Value::Array(thousand);
    assert!(body.to_string().len() > 64 * 1024);
    let reply = client.post("/cities/bulk", &body).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        &reply.text[..reply.text.len().min(500)]
    );
    assert_eq!(reply.body["accepted"], 1000);
    let items = reply.body["items"].as_array().unwrap();
    for (index, item) in items.iter().enumerate() {
        assert_eq!(item["index"], index);
        assert_eq!(item["key"], key(&format!("Bulk {index} {padding}")));
    }
    let last = &items[999];
    let read = client
        .read_version(
            last["key"].as_str().unwrap(),
            last["offset"].as_i64().unwrap(),
        )
        .await;
    assert_eq!(read.body["population"], 999, "{}", read.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_city_is_gone_until_written_again() {
    let (_stack, _names, _indexer, api) = start("delete").await;
    let client = Client::of(&api);

    let (_, _, created) = client
        .post_city("Berlin", 3_600_000)
        .await
        .assert_accepted();
    client.post_city("Bern", 134_000).await.assert_accepted();
    assert_eq!(client.read_version("berlin", created).await.status, 200);
    client
        .wait_listing("prefix=ber", "berlin and bern listed", |keys| {
            keys == ["berlin", "bern"]
        })
        .await;

    let (key, _, deleted) = client.delete_city("BERLIN").await.assert_accepted();
    assert_eq!(key, "berlin");
    assert!(deleted > created);
    // Read-your-writes on the delete: the version is reached, the city is gone.
    client
        .read_version("Berlin", deleted)
        .await
        .assert_problem(404, "not-found");
    client
        .get_city("Berlin", "")
        .await
        .assert_problem(404, "not-found");
    client
        .wait_listing("prefix=ber", "berlin no longer listed", |keys| {
            keys == ["bern"]
        })
        .await;
    // A wait for a later version reports the city as absent.
    let waited = client
        .get_city(
            "berlin",
            &format!("?min_version={}&wait_ms=100", deleted + 1),
        )
        .await;
    waited.assert_problem(409, "version-not-reached");
    assert!(waited.body["current_version"].is_null(), "{}", waited.text);

    // An upsert brings it back.
    let (_, _, recreated) = client
        .post_city("Berlin", 3_700_000)
        .await
        .assert_accepted();
    assert!(recreated > deleted);
    let read = client.read_version("berlin", recreated).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["population"], 3_700_000);
    assert_eq!(read.body["version"], recreated);
    client
        .wait_listing("prefix=ber", "berlin listed again", |keys| {
            keys == ["berlin", "bern"]
        })
        .await;

    // Deleting a city that never existed is accepted: writes do not read the index.
    client.delete_city("Atlantis").await.assert_accepted();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_city_exactly_once() {
    let (_stack, _names, _indexer, api) = start("paging").await;
    let client = Client::of(&api);

    // 250 cities with many equal populations (the tiebreak matters), in mixed case
    // (the order is the key's), 20 others, and 10 deleted.
    let mut cities: BTreeMap<String, i64> = BTreeMap::new();
    let mut batch = Vec::new();
    for i in 0..250 {
        let name = if i % 2 == 0 {
            format!("Page City {i:03}")
        } else {
            format!("PAGE city {i:03}")
        };
        let population = (i % 7) * 1000;
        cities.insert(key(&name), population);
        batch.push(json!({"name": name, "population": population}));
    }
    for i in 0..20 {
        batch.push(json!({"name": format!("Other {i}"), "population": 5}));
    }
    let reply = client.post("/cities/bulk", &Value::Array(batch)).await;
    assert_eq!(reply.body["accepted"], 270, "{}", reply.text);
    for i in (0..250).step_by(25) {
        let name = format!("page city {i:03}");
        client.delete_city(&name).await.assert_accepted();
        cities.remove(&key(&name));
    }
    assert_eq!(cities.len(), 240);
    client
        .wait_listing("prefix=page&limit=1000", "240 live page cities", |keys| {
            keys.len() == 240 && keys.iter().all(|k| cities.contains_key(k))
        })
        .await;

    for sort in ["name", "population", "-population"] {
        let items = client
            .list_all(&format!("prefix=page%20city&sort={sort}&limit=7"))
            .await;
        let listed = keys(&items);
        let unique: BTreeSet<&String> = listed.iter().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "{sort}: a city was listed twice"
        );
        assert_eq!(
            unique.into_iter().cloned().collect::<Vec<_>>(),
            cities.keys().cloned().collect::<Vec<_>>(),
            "{sort}: not every city was listed"
        );
        let order: Vec<(i64, String)> = items
            .iter()
            .map(|item| {
                let key = item["key"].as_str().unwrap().to_owned();
                assert_eq!(item["population"], cities[&key], "{item}");
                let population = item["population"].as_i64().unwrap();
                match sort {
                    "name" => (0, key),
                    "population" => (population, key),
                    _ => (-population, key),
                }
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{sort}: out of order");
    }

    // Filters.
    let in_range = keys(
        &client
            .list_all("min_population=2000&max_population=4000&limit=1000")
            .await,
    );
    let expected: Vec<&String> = cities
        .iter()
        .filter(|(_, p)| (2000..=4000).contains(*p))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(in_range.iter().collect::<Vec<_>>(), expected);
    let others = client.list_all("prefix=OTHER&limit=1000").await;
    assert_eq!(others.len(), 20);
    assert!(others.iter().all(|o| o["population"] == 5));

    // The default page is 50, and the last page has no cursor.
    let first = client.get("/cities?prefix=page").await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 50);
    assert!(first.body["next_cursor"].is_string());
    let all = client.get("/cities?prefix=page&limit=1000").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 240);
    assert!(all.body["next_cursor"].is_null());

    // Parameters are checked, the cursor included.
    let cursor = first.body["next_cursor"].as_str().unwrap();
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("sort=-name", "sort"),
        ("min_population=-1", "min_population"),
        ("min_population=9&max_population=8", "min_population"),
        ("cursor=bm9wZQ", "cursor"),
        ("page=2", "page"),
    ] {
        let reply = client.get(&format!("/cities?{query}")).await;
        assert_eq!(reply.assert_problem(422, "validation"), [field], "{query}");
    }
    let reply = client
        .get(&format!("/cities?cursor={cursor}&sort=-population"))
        .await;
    assert_eq!(reply.assert_problem(422, "validation"), ["cursor"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_returns_the_value_just_written() {
    let (_stack, _names, _indexer, api) = start("ryw").await;
    let client = Client::of(&api);

    // Each read right after its write sees it, however fast the writes come.
    let mut last = 0;
    for population in 1..=20 {
        let (_, _, offset) = client
            .post_city("Lisbon", population)
            .await
            .assert_accepted();
        let read = client.read_version("LISBON", offset).await;
        assert_eq!(read.status, 200, "{}", read.text);
        assert_eq!(read.body["population"], population);
        assert!(read.body["version"].as_i64().unwrap() >= offset);
        last = offset;
    }
    // A version already reached answers at once.
    let read = client.read_version("lisbon", last).await;
    assert_eq!(read.status, 200);
    assert!(read.elapsed < Duration::from_secs(2), "{:?}", read.elapsed);

    // A version never reached: 409 after the wait, with the current version.
    let waited = client
        .get_city(
            "lisbon",
            &format!("?min_version={}&wait_ms=400", last + 1_000),
        )
        .await;
    waited.assert_problem(409, "version-not-reached");
    assert_eq!(waited.body["current_version"], last);
    assert_eq!(waited.body["min_version"], last + 1_000);
    assert!(
        waited.elapsed >= Duration::from_millis(400) && waited.elapsed < Duration::from_secs(3),
        "{:?}",
        waited.elapsed
    );
    let absent = client
        .get_city("Nowhere", "?min_version=0&wait_ms=100")
        .await;
    absent.assert_problem(409, "version-not-reached");
    assert!(absent.body["current_version"].is_null(), "{}", absent.text);

    // The wait is bounded and needs a version to wait for.
    for (query, field) in [
        ("?min_version=1&wait_ms=10001", "wait_ms"),
        ("?wait_ms=100", "wait_ms"),
        ("?min_version=-1", "min_version"),
        ("?min_version=abc", "min_version"),
    ] {
        let reply = client.get_city("lisbon", query).await;
        assert_eq!(reply.assert_problem(422, "validation"), [field], "{query}");
    }
}

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
    let client = Client::of(&api);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_gives_503_with_retry_after() {
    let stack = Stack::from_env();
    let names = Names::unique("nokafka");
    let publish_timeout = Duration::from_secs(1);
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            (
                "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{}", unused_port()),
            ),
            ("CITYPOP_PUBLISH_TIMEOUT", "1s".into()),
        ],
        Readiness::Live,
    )
    .await;
    let client = Client::of(&api);

    let ready = client.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.body["checks"]["kafka"]["status"], "down");
    assert_eq!(ready.body["checks"]["elasticsearch"]["status"], "up");
    let health = client.get("/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(
        (
            &health.body["status"],
            &health.body["kafka"],
            &health.body["elasticsearch"]
        ),
        (&json!("error"), &json!("disconnected"), &json!("connected"))
    );

    let writes = [
        client.post_city("Paris", 1).await,
        client
            .send(
                client
                    .http
                    .put(client.city_path("cities", "Paris"))
                    .json(&json!({"population": 2})),
            )
            .await,
        client.delete_city("Paris").await,
        client
            .post(
                "/cities/bulk",
                &json!([{"name": "Paris", "population": 3}, {"name": "Lyon", "population": 4}]),
            )
            .await,
    ];
    for reply in &writes {
        reply.assert_problem(503, "unavailable");
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .expect("retry-after in seconds");
        assert!(retry_after >= 1);
        assert!(
            reply.elapsed < publish_timeout + Duration::from_millis(1500),
            "a 503 took {:?}, past the publish timeout",
            reply.elapsed
        );
    }
    assert_eq!(writes[3].body["items"][1]["result"], "failed");
    assert_eq!(writes[3].body["items"][1]["status"], 503);
    assert!(
        api.metric(r#"citypop_publish_failures_total{reason="timeout"}"#)
            .await
            >= 5.0
    );
    assert_eq!(
        api.metric(r#"http_requests_total{method="POST",route="/city",status="503"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_recover_when_kafka_comes_back() {
    let stack = Stack::from_env();
    let names = Names::unique("recover");
    let _indexer = spawn_indexer(&stack, &names).await;
    // Kafka behind a line that is cut from the start: the API has never reached it.
    let first_broker = stack.kafka.split(',').next().unwrap().to_owned();
    let proxy = FaultProxy::start(&first_broker).await;
    proxy.cut().await;
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            ("CITYPOP_KAFKA_BOOTSTRAP_SERVERS", proxy.addr.to_string()),
            ("CITYPOP_PUBLISH_TIMEOUT", "1s".into()),
        ],
        Readiness::Live,
    )
    .await;
    let client = Client::of(&api);
    client
        .post_city("Rome", 1)
        .await
        .assert_problem(503, "unavailable");
    assert_eq!(client.get("/readyz").await.status, 503);

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    let offset = loop {
        let reply = client.post_city("Rome", 2_761_632).await;
        if reply.status == 202 {
            break reply.assert_accepted().2;
        }
        reply.assert_problem(503, "unavailable");
        assert!(
            Instant::now() < deadline,
            "writes did not recover within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let read = client.read_version("rome", offset).await;
    assert_eq!(read.body["population"], 2_761_632, "{}", read.text);
    assert_eq!(client.get("/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_gives_503_at_once() {
    let stack = Stack::from_env();
    let names = Names::unique("queuefull");
    let api = spawn_producer_api_with(
        &stack,
        &names,
        &[
            (
                "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{}", unused_port()),
            ),
            ("CITYPOP_PUBLISH_TIMEOUT", "4s".into()),
            ("CITYPOP_PRODUCER_QUEUE_MESSAGES", "1".into()),
        ],
        Readiness::Live,
    )
    .await;
    let client = Client::of(&api);
    // The first write takes the only place in the queue and waits for Kafka...
    let first = {
        let http = client.http.clone();
        let url = format!("{}/city", client.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .json(&json!({"name": "Madrid", "population": 1}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...so the next one is refused at once, not after the publish timeout.
    let second = client.post_city("Madrid", 2).await;
    second.assert_problem(503, "unavailable");
    assert!(second.header("retry-after").is_some());
    assert!(
        second.elapsed < Duration::from_secs(2),
        "{:?}",
        second.elapsed
    );
    assert!(
        second.body["detail"]
            .as_str()
            .unwrap()
            .contains("queue is full"),
        "{}",
        second.text
    );
    let (status, elapsed) = first.await.unwrap();
    assert_eq!(status, 503);
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(
        api.metric(r#"citypop_publish_failures_total{reason="queue_full"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_and_event_headers_reach_kafka() {
    let (stack, names, _indexer, api) = start("trace").await;
    let client = Client::of(&api);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let before = now_micros();

    let traced = client
        .send(
            client
                .http
                .post(format!("{}/city", client.base))
                .header("traceparent", incoming)
                .json(&json!({"name": "Vienna", "population": 2_005_760})),
        )
        .await;
    let (_, traced_partition, traced_offset) = traced.assert_accepted();
    let untraced = client.post_city("Graz", 291_072).await;
    let (_, graz_partition, graz_offset) = untraced.assert_accepted();
    let deleted = client.delete_city("Vienna").await;
    let (_, delete_partition, delete_offset) = deleted.assert_accepted();

    let kafka = Kafka::connect(&stack.kafka);
    let topic = names.topic.clone();
    let records = tokio::task::spawn_blocking(move || kafka.read_all(&topic))
        .await
        .unwrap();
    let find = |partition: i32, offset: i64| {
        records
            .iter()
            .find(|r| r.partition == partition && r.offset == offset)
            .unwrap_or_else(|| panic!("no message at {partition}/{offset}"))
    };

    // The caller's trace, with this service's own span.
    let update = find(traced_partition, traced_offset);
    let traceparent = &update.headers["traceparent"];
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && traceparent.ends_with("-01"),
        "{traceparent}"
    );
    assert_ne!(
        traceparent, incoming,
        "the parent id is this service's span"
    );
    assert_eq!(update.headers["content-type"], event::CONTENT_TYPE);
    assert_eq!(update.key.as_deref(), Some("vienna".as_bytes()));
    let decoded = Codec::new()
        .decode(update.payload.as_ref().unwrap())
        .unwrap();
    assert_eq!(decoded.event_id, traced.body["event_id"].as_str().unwrap());
    assert_eq!(
        (decoded.city.as_str(), decoded.population),
        ("Vienna", 2_005_760)
    );

    // Without a traceparent, a new trace starts.
    let started = &find(graz_partition, graz_offset).headers["traceparent"];
    assert_eq!(started.len(), 55, "{started}");
    assert!(started.starts_with("00-") && !started.contains("4bf92f3577b34da6a3ce929d0e0e4736"));

    // A tombstone: no value, the event id and time in headers.
    let tombstone = find(delete_partition, delete_offset);
    assert!(tombstone.payload.is_none());
    assert_eq!(tombstone.key.as_deref(), Some("vienna".as_bytes()));
    assert_eq!(
        tombstone.headers[event::HEADER_EVENT_ID],
        deleted.body["event_id"].as_str().unwrap()
    );
    let occurred_at: i64 = tombstone.headers[event::HEADER_OCCURRED_AT]
        .parse()
        .unwrap();
    assert!(
        occurred_at >= before && occurred_at <= now_micros(),
        "{occurred_at}"
    );
    assert!(tombstone.headers.contains_key("traceparent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi_describe_the_service() {
    let (_stack, names, _indexer, api) = start("ops").await;
    let client = Client::of(&api);

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
    let client = Client::of(&api);
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
