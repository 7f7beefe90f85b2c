//! Names across the routes: any name the API accepts can be written and read back
//! by the `Location` it returned; a name that could not be is refused at the write.

use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use citypop_tests::api_client::{ApiClient, MAX_WAIT_MS};

use super::start;

/// How many generated names go through the real pipeline.
const CASES: usize = 300;

/// Pieces that are hard on URLs, on the router and on Unicode handling, besides
/// arbitrary characters.
const HARD: &[&str] = &[
    "/",
    "?",
    "#",
    "%",
    "+",
    "&",
    ".",
    "..",
    " ",
    "  ",
    "%2F",
    "%2e",
    "\\",
    ";",
    "=",
    "bulk",
    "{name}",
    "😀",
    "🏳️‍🌈",
    "مدينة",
    "עיר",
    "\u{202e}",
    "\u{200b}",
    "İ",
    "ß",
    "Σ",
    "e\u{301}",
    "\u{3000}",
    "~",
    "'",
    "\"",
    "<",
    "@",
];

fn names() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => prop::sample::select(HARD).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
        1 => "[a-zA-Z]{1,6}",
    ];
    prop::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_name_reads_back_by_its_location() {
    let (_stack, _names, _indexer, api) = start("names").await;
    let client = ApiClient::of(&api);

    let mut runner = TestRunner::new(Config::default());
    let mut generated: Vec<String> = ["bulk", ".", "..", "...", ". .", "a/..", "%2e%2e"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    // Names run concurrently, so two for one city would race each other's writes
    // and read each other's values: one name per city key.
    let mut cities: std::collections::HashSet<String> =
        generated.iter().map(|n| city_of(n)).collect();
    while generated.len() < CASES {
        let name = names().new_tree(&mut runner).expect("a name").current();
        if cities.insert(city_of(&name)) {
            generated.push(name);
        }
    }

    let failures: Vec<String> = futures::stream::iter(generated)
        .map(|name| {
            let client = client.clone();
            async move { round_trip(&client, &name).await.err() }
        })
        .buffer_unordered(16)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} name(s) do not round-trip: {failures:#?}",
        failures.len()
    );
}

/// The city key of `name`, or the name itself when it is no valid city.
fn city_of(name: &str) -> String {
    citypop_schemas::CityKey::parse(name)
        .map_or_else(|_| name.to_owned(), |key| key.as_str().to_owned())
}

/// Writes `name` by POST and by PUT; when accepted, reads it back by the
/// `Location` of the write. Refusals must be validation problems.
async fn round_trip(client: &ApiClient, name: &str) -> Result<(), String> {
    let posted = client.post_city(name, 7).await;
    let put = client.put_city(name, 8).await;
    match (posted.status, put.status) {
        (202, 202) => {}
        (422, 422) => return Ok(()),
        // `.` and `..` as a path segment never reach the server: the URL parser
        // resolves them away (to `/cities/` or `/cities`).
        (422, 404 | 405) if matches!(name.trim(), "." | "..") => return Ok(()),
        (post, put_status) => {
            return Err(format!(
                "{name:?}: POST {post} {}, PUT {put_status} {}",
                posted.text, put.text
            ));
        }
    }
    let location = posted.header("location").unwrap_or_default().to_owned();
    let offset = put.body["offset"].as_i64().unwrap_or_default();
    if put.header("location") != Some(location.as_str()) {
        return Err(format!(
            "{name:?}: POST gave Location {location:?}, PUT {:?}",
            put.header("location")
        ));
    }
    let read = client
        .get(&format!(
            "{location}?min_version={offset}&wait_ms={MAX_WAIT_MS}"
        ))
        .await;
    let wanted = (200, json!(posted.body["key"]), json!(8));
    let got = (
        read.status,
        read.body["key"].clone(),
        read.body["population"].clone(),
    );
    if got == wanted {
        Ok(())
    } else {
        Err(format!("{name:?}: GET {location} answered {}", read.text))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_are_refused() {
    let (_stack, _names, _indexer, api) = start("lookalike").await;
    let client = ApiClient::of(&api);
    for name in [
        "par\u{200b}is",
        "\u{202e}sirap",
        "par\u{ad}is",
        "\u{feff}Paris",
        "Par\u{2028}is",
        "Par\u{2029}is",
    ] {
        let fields = client
            .post_city(name, 1)
            .await
            .assert_problem(422, "validation");
        assert_eq!(fields, ["name"], "{name:?}");
        let fields = client
            .put_city(name, 1)
            .await
            .assert_problem(422, "validation");
        assert_eq!(fields, ["name"], "{name:?}");
        let bulk = client
            .post("/cities/bulk", &json!([{"name": name, "population": 1}]))
            .await;
        bulk.assert_problem(422, "validation");
    }
}
