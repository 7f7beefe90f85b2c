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

/// A raw `_bulk` loader: the final documents, in bulks of `bulk_size`, versioned as
/// the indexer versions them, `concurrency` requests in flight. Bodies are built
/// before the clock starts, so the ceiling is the engine's alone.
pub async fn raw_bulk(
    http: &reqwest::Client,
    engine: &str,
    index: &str,
    documents: &[CityDocument],
    bulk_size: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    http.put(format!("{engine}/{index}"))
        .json(&json!({"settings": {"number_of_replicas": 0}}))
        .send()
        .await?
        .error_for_status()?;
    let bodies: Vec<Bytes> = documents
        .chunks(bulk_size)
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
        .collect();
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(bodies)
        .map(|body| async move {
            let response: Value = http
                .post(format!("{engine}/{index}/_bulk"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::ensure!(
                response["errors"] == false,
                "bulk errors: {}",
                truncate(&response.to_string())
            );
            Ok(())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    for result in results {
        result?;
    }
    Ok(documents.len() as f64 / seconds)
}

fn truncate(text: &str) -> &str {
    &text[..text.len().min(500)]
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
