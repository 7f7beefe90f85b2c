//! The thin end-to-end path: POST → Kafka → indexer → index → GET, then a rebuild
//! of a second index from the same topic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use citypop_schemas::CityKey;
use citypop_tests::api_client::ApiClient;
use citypop_tests::{Names, Stack, spawn_indexer, spawn_producer_api};
use futures::StreamExt;
use rand::seq::SliceRandom;

const CITIES: usize = 200;
const UPDATES_PER_CITY: usize = 10;
/// Requests in flight at once while loading.
const CONCURRENCY: usize = 32;
/// How long the index may take to catch up with everything accepted.
const CATCH_UP: Duration = Duration::from_secs(120);

/// What a GET must show for each city key: the population of the accepted update
/// with the highest offset (one key, one partition, so offsets order its updates).
type Expected = HashMap<String, (i64, i64)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_city_shows_its_last_accepted_update_and_a_rebuild_agrees() {
    let stack = Stack::from_env();
    let names = Names::unique("pipeline");
    let indexer = spawn_indexer(&stack, &names).await;
    let api = spawn_producer_api(&stack, &names).await;
    let client = ApiClient::of(&api);

    // Several spellings per city: the API must fold them into one key.
    let mut updates = Vec::with_capacity(CITIES * UPDATES_PER_CITY);
    for city in 0..CITIES {
        for update in 0..UPDATES_PER_CITY {
            let name = match update % 3 {
                0 => format!("Ville {city} Sur Mer"),
                1 => format!("  VILLE {city}   sur mer "),
                _ => format!("ville {city} sur MER"),
            };
            updates.push((name, (city * 1000 + update) as i64));
        }
    }
    updates.shuffle(&mut rand::rng());

    let accepted: Vec<(String, i64, i64)> = futures::stream::iter(updates)
        .map(|(name, population)| {
            let client = client.clone();
            async move {
                let reply = client.post_city(&name, population).await;
                let (key, _, offset) = reply.assert_accepted();
                let location = reply.header("location").expect("location");
                assert_eq!(key, CityKey::parse(&name).unwrap().as_str());
                assert!(location.starts_with("/city/ville%20"), "{location}");
                (key, offset, population)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let mut expected: Expected = HashMap::new();
    for (key, offset, population) in accepted {
        let entry = expected.entry(key).or_insert((offset, population));
        if offset > entry.0 {
            *entry = (offset, population);
        }
    }
    assert_eq!(expected.len(), CITIES);

    assert_index_shows(&client, &expected).await;

    // A first replay: a fresh indexer, its own group, its own index, same topic.
    assert!(
        indexer.terminate().await.success(),
        "indexer exits 0 on SIGTERM"
    );
    let rebuilt = names.rebuild("rebuilt");
    let _indexer = spawn_indexer(&stack, &rebuilt).await;
    let rebuilt_api = spawn_producer_api(&stack, &rebuilt).await;
    assert_index_shows(&ApiClient::of(&rebuilt_api), &expected).await;
}

/// Polls until every city shows its expected population and version, then asserts
/// it once more for all of them.
async fn assert_index_shows(client: &ApiClient, expected: &Expected) {
    let deadline = Instant::now() + CATCH_UP;
    let mut mismatches = Vec::new();
    while Instant::now() < deadline {
        mismatches.clear();
        for (key, &(offset, population)) in expected {
            let reply = client.get_city(key, "").await;
            let (status, body) = (reply.status, reply.body);
            if status != 200 || body["population"] != population || body["version"] != offset {
                mismatches.push(format!(
                    "{key}: got {status} {body}, want population {population} version {offset}"
                ));
            }
        }
        if mismatches.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "{} of {} cities wrong after {CATCH_UP:?}, e.g. {:?}",
        mismatches.len(),
        expected.len(),
        &mismatches[..mismatches.len().min(5)]
    );
}
