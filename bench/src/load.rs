//! Closed-loop load: `concurrency` workers each sending one request after another
//! for a fixed time, with every latency recorded.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;

use crate::preload::city_name;

#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl LoadResult {
    pub fn from_latencies(mut latencies: Vec<Duration>, errors: u64, seconds: f64) -> Self {
        latencies.sort_unstable();
        let ok = latencies.len() as u64;
        Self {
            ok,
            errors,
            seconds,
            per_second: ok as f64 / seconds.max(1e-9),
            p50_ms: percentile_ms(&latencies, 0.50),
            p99_ms: percentile_ms(&latencies, 0.99),
        }
    }
}

/// The latency at `q` of sorted `latencies`, in milliseconds (nearest rank).
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Runs `request` from `concurrency` workers for `duration`. A request returning
/// `Err` counts as an error and its latency is not recorded.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, request: F) -> LoadResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|worker| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = worker;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match request(n).await {
                        Ok(()) => latencies.push(sent.elapsed()),
                        Err(_) => errors += 1,
                    }
                    n += concurrency as u64;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await.unwrap_or_default();
        latencies.extend(l);
        errors += e;
    }
    LoadResult::from_latencies(latencies, errors, started.elapsed().as_secs_f64())
}

/// `GET {prefix}/{key}` of random existing cities from `concurrency` workers: the
/// read load, through producer-api or straight to the engine.
pub async fn get_cities(
    prefix: String,
    cities: usize,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    let http = crate::client();
    let prefix = Arc::new(prefix);
    closed_loop(concurrency, duration, move |_| {
        let (http, prefix) = (http.clone(), prefix.clone());
        async move {
            let key = city_name(rand::rng().random_range(0..cities)).to_lowercase();
            let response = http
                .get(format!("{prefix}/{key}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(response.status().to_string());
            }
            response
                .bytes()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 0.5), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }
}
