//! producer-api's HTTP contract (brief §4, §7) against real Kafka, a real engine and
//! a real indexer, one file per route (or per concern every route shares). All go
//! through the harness's `ApiClient`.

mod api_keys;
mod bulk;
mod delete;
mod errors;
mod get;
mod limits;
mod list;
mod names;
mod operations;
mod readiness;
mod unavailable;
mod upsert;

use citypop_schemas::CityKey;
use citypop_tests::{Names, Service, Stack, spawn_indexer, spawn_producer_api};

/// The key of a valid name.
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
