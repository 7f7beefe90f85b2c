//! `GET /cities`: filters, sorts and paging.

use std::collections::{BTreeMap, BTreeSet};

use citypop_tests::api_client::{ApiClient, keys};
use serde_json::{Value, json};

use super::{key, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_returns_every_city_exactly_once() {
    let (_stack, _names, _indexer, api) = start("paging").await;
    let client = ApiClient::of(&api);

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
