//! The engine's own ceilings: what a tight client writing straight to the engine
//! achieves, against which citypop is measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use citypop_schemas::document::CityDocument;
use futures::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

use crate::load::{LoadResult, closed_loop, get_cities};
use crate::preload::city_name;

/// The parts of each item's answer the indexer asks `_bulk` for (its
/// `filter_path`), so the engine serialises as much for the ceiling as for it.
const BULK_FILTER_PATH: &str = "items.*.status,items.*.error";

/// `documents` as `_bulk` bodies of `bulk_size` `index` actions each, carrying the
/// Kafka offset as external version as the indexer's do. Built once, before any
/// clock starts, and reused by every round.
pub fn bulk_bodies(documents: &[CityDocument], bulk_size: usize) -> Vec<Bytes> {
    documents
        .chunks(bulk_size.max(1))
        .map(|chunk| {
            let mut body = Vec::new();
            for doc in chunk {
                let action = json!({"index": {"_id": doc.key, "version": doc.version, "version_type": "external"}});
                body.extend(action.to_string().as_bytes());
                body.push(b'\n');
                body.extend(serde_json::to_vec(doc).unwrap_or_default());
                body.push(b'\n');
            }
            Bytes::from(body)
        })
        .collect()
}

/// A raw `_bulk` loader: `bodies` to `target` (an index or an alias), in order,
/// `concurrency` requests in flight. A version conflict counts as done, as it does
/// for the indexer: two bulks in flight may carry the same city, and the newer
/// version is already in. Returns the elapsed seconds.
pub async fn raw_bulk(
    http: &reqwest::Client,
    engine: &str,
    target: &str,
    bodies: &[Bytes],
    concurrency: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(bodies.iter().cloned())
        .map(|body| async move {
            let response: Value = http
                .post(format!("{engine}/{target}/_bulk"))
                .query(&[("filter_path", BULK_FILTER_PATH)])
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let items = response["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let failed = items.iter().find(|item| {
                let status = item["index"]["status"].as_u64().unwrap_or_default();
                !(200..300).contains(&status) && status != 409
            });
            anyhow::ensure!(
                failed.is_none(),
                "bulk item failed: {}",
                truncate(&failed.map(Value::to_string).unwrap_or_default())
            );
            Ok(())
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    for result in results {
        result?;
    }
    Ok(seconds)
}

fn truncate(text: &str) -> &str {
    text.char_indices()
        .nth(500)
        .map_or(text, |(i, _)| &text[..i])
}

/// Single-document writes straight to the engine, one request per update: the
/// original API's synchronous design.
pub async fn direct_put(
    engine: &str,
    index: &str,
    cities: usize,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let http = crate::client();
    let engine = Arc::new(engine.to_owned());
    let index = Arc::new(index.to_owned());
    closed_loop(concurrency, duration, move |n| {
        let (http, engine, index) = (http.clone(), engine.clone(), index.clone());
        async move {
            let city = rand::rng().random_range(0..cities);
            let name = city_name(city);
            let key = name.to_lowercase();
            let doc = json!({"key": key, "name": name, "population": n as i64, "updated_at": chrono::Utc::now().to_rfc3339(), "version": n, "partition": 0, "deleted": false});
            let response = http
                .put(format!("{engine}/{index}/_doc/{key}"))
                .json(&doc)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if response.status().is_success() { Ok(()) } else { Err(response.status().to_string()) }
        }
    })
    .await
}

/// Reads by id straight from the engine.
pub async fn direct_get(
    engine: &str,
    alias: &str,
    cities: usize,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    get_cities(
        format!("{engine}/{alias}/_doc"),
        cities,
        concurrency,
        duration,
    )
    .await
}
