//! `POST /city` and `PUT /cities/{name}`: every status code of a single write, Unicode
//! spellings of one city, and what a write carries into Kafka.

use std::collections::BTreeSet;

use citypop_schemas::CityName;
use citypop_schemas::event::{self, Codec};
use citypop_tests::api_client::ApiClient;
use citypop_tests::kafka::{Kafka, now_micros};
use reqwest::Method;
use serde_json::{Value, json};

use super::{chunked_post, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_of_single_requests() {
    let (_stack, _names, _indexer, api) = start("status").await;
    let client = ApiClient::of(&api);

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

    // 413: a body over 64 KiB, even if it were valid. Sent by hand: the server
    // answers before reading the rest, and an HTTP client still writing the body
    // would see its pipe broken instead of the answer.
    let answer = chunked_post(&client.base, "/city", 65 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(
        answer.contains("urn:citypop:problem:payload-too-large"),
        "{answer}"
    );

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
    let client = ApiClient::of(&api);

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
async fn trace_context_and_event_headers_reach_kafka() {
    let (stack, names, _indexer, api) = start("trace").await;
    let client = ApiClient::of(&api);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let before = now_micros();

    let traced = client
        .send(
            client
                .http
                .post(format!("{}/city", client.base))
                .header("traceparent", incoming)
                .header("tracestate", "citypop=e2e,other=1")
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
    // The caller's tracestate travels along unchanged.
    assert_eq!(
        update.headers.get("tracestate").map(String::as_str),
        Some("citypop=e2e,other=1")
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
