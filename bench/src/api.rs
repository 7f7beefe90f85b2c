//! Load through producer-api: writes, reads, and freshness (202 to visible).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use crate::load::{LoadResult, closed_loop, get_cities, percentile_ms};
use crate::preload::city_name;

/// `POST /city` from `concurrency` workers; only a 202 counts.
pub async fn post(
    base_url: &str,
    cities: usize,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let http = crate::client();
    let url = Arc::new(format!("{base_url}/city"));
    closed_loop(concurrency, duration, move |n| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let name = city_name(rand::rng().random_range(0..cities));
            let response = http
                .post(url.as_str())
                .json(&json!({"name": name, "population": n as i64}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if response.status() == 202 {
                Ok(())
            } else {
                Err(response.status().to_string())
            }
        }
    })
    .await
}

/// `GET /city/{name}` of existing cities from `concurrency` workers.
pub async fn get(
    base_url: &str,
    cities: usize,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    get_cities(format!("{base_url}/city"), cities, concurrency, duration).await
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Freshness {
    pub rate_per_second: f64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub missed: usize,
}

/// How often a sampled write is looked for until it shows: the resolution of the
/// measure, up to the 250 ms target.
const FRESHNESS_POLL: Duration = Duration::from_millis(10);
/// How often a write still not visible after the target is looked for. Polling late
/// writes as often as fresh ones made the measure its own load: once the index
/// lagged, the reads multiplied and the lag grew.
const FRESHNESS_LATE_POLL: Duration = Duration::from_millis(25);
/// P5's target for the 99th percentile.
pub const FRESHNESS_TARGET: Duration = Duration::from_millis(250);
/// A write not visible after this long counts as missed.
const FRESHNESS_LIMIT: Duration = Duration::from_secs(10);
/// One write in this many is followed until visible. Following every write would add
/// a read load many times the write load, and measure that load instead.
const SAMPLE_EVERY: u64 = 50;

/// Writes at a fixed `rate` for `duration`; for a sample of them, the time from the
/// 202 until `GET /city/{name}` shows the written version.
pub async fn freshness(base_url: &str, cities: usize, rate: f64, duration: Duration) -> Freshness {
    let http = crate::client();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut followers = Vec::new();
    let mut n: u64 = 0;
    while started.elapsed() < duration {
        ticker.tick().await;
        n += 1;
        let (http, base) = (http.clone(), base_url.to_owned());
        let sampled = n.is_multiple_of(SAMPLE_EVERY);
        followers.push(tokio::spawn(async move {
            // Sampled writes use cities of their own, so no other write moves them on.
            let name = if sampled {
                format!("Fresh City {n}")
            } else {
                city_name(rand::rng().random_range(0..cities))
            };
            let response = http
                .post(format!("{base}/city"))
                .json(&json!({"name": name, "population": n as i64}))
                .send()
                .await
                .ok()?;
            if response.status() != 202 || !sampled {
                return None;
            }
            let accepted_at = Instant::now();
            let body: Value = response.json().await.ok()?;
            let (key, offset) = (body["key"].as_str()?.to_owned(), body["offset"].as_i64()?);
            while accepted_at.elapsed() < FRESHNESS_LIMIT {
                if let Ok(response) = http.get(format!("{base}/city/{key}")).send().await
                    && response.status() == 200
                    && let Ok(doc) = response.json::<Value>().await
                    && doc["version"].as_i64().is_some_and(|v| v >= offset)
                {
                    return Some(Some(accepted_at.elapsed()));
                }
                let pause = if accepted_at.elapsed() < FRESHNESS_TARGET {
                    FRESHNESS_POLL
                } else {
                    FRESHNESS_LATE_POLL
                };
                tokio::time::sleep(pause).await;
            }
            Some(None)
        }));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut missed = 0;
    for follower in followers {
        match follower.await.ok().flatten() {
            Some(Some(latency)) => latencies.push(latency),
            Some(None) => missed += 1,
            None => {}
        }
    }
    latencies.sort_unstable();
    Freshness {
        rate_per_second: n as f64 / seconds,
        samples: latencies.len(),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        missed,
    }
}
