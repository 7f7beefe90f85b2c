//! Reading the search index directly, to check what the indexer wrote.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Every document behind `alias`, by key (at most 10,000: tests stay below that).
pub async fn documents(engine_url: &str, alias: &str) -> BTreeMap<String, Value> {
    let http = reqwest::Client::new();
    // Make everything written so far visible to search.
    http.post(format!("{engine_url}/{alias}/_refresh"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("refreshing {alias}: {e}"));
    let body: Value = http
        .post(format!("{engine_url}/{alias}/_search"))
        .json(&json!({"size": 10000, "query": {"match_all": {}}}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("searching {alias}: {e}"))
        .json()
        .await
        .expect("search response");
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

/// Names of the indexes behind `alias`.
pub async fn indexes_behind(engine_url: &str, alias: &str) -> Vec<String> {
    let body: Value = reqwest::get(format!("{engine_url}/_alias/{alias}"))
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("reading alias {alias}: {e}"))
        .json()
        .await
        .expect("alias response");
    body.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Creates the first index behind `alias` with the real mapping except that
/// `population` is a 32-bit integer, as a hand-edited template might have it: the
/// engine then rejects populations above 2^31 with a mapping error. An indexer
/// started afterwards finds the alias and writes through it.
pub async fn create_narrow_index(engine_url: &str, alias: &str) {
    let mut mappings = citypop_schemas::document::mappings();
    mappings["properties"]["population"]["type"] = json!("integer");
    reqwest::Client::new()
        .put(format!("{engine_url}/{alias}-initial"))
        .json(&json!({
            "mappings": mappings,
            "settings": {"number_of_replicas": 0},
            "aliases": {alias: {}}
        }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("creating the narrow index for {alias}: {e}"));
}

/// Applies `_aliases` actions (`add`, `remove`) in one atomic call.
pub async fn update_aliases(engine_url: &str, actions: Value) {
    reqwest::Client::new()
        .post(format!("{engine_url}/_aliases"))
        .json(&json!({ "actions": actions }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("updating aliases with {actions}: {e}"));
}

/// Creates an empty index `name`: the template of the alias it is named after gives
/// it the mapping.
pub async fn create_index(engine_url: &str, name: &str) {
    reqwest::Client::new()
        .put(format!("{engine_url}/{name}"))
        .json(&json!({"settings": {"number_of_replicas": 0}}))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("creating index {name}: {e}"));
}
