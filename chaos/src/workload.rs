//! The load: writers (single upserts, bulk upserts, deletes) over a Zipf choice of
//! cities at a steady rate, spread over the producer-api processes, and a reader
//! that follows a sample of cities. Every answer is recorded for the end checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Zipf's exponent: a few hot cities take most writes, as real traffic does (the
/// bench's choice too).
const ZIPF_EXPONENT: f64 = 1.1;
/// Items in one bulk request: enough to exercise per-item answers, small enough
/// that bulk does not dwarf the single writes.
const BULK_ITEMS: std::ops::RangeInclusive<usize> = 5..=20;
/// Above the API's longest answer (its request timeout, 30 s): a client timeout is
/// then a real failure to answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(45);
/// Pause between two reads of the reader.
const READ_PAUSE: Duration = Duration::from_millis(50);

pub fn city_name(i: usize) -> String {
    format!("Chaos City {i}")
}

/// The city key of [`city_name`]: lower-cased, as producer-api derives it.
pub fn city_key(i: usize) -> String {
    format!("chaos city {i}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteKind {
    Upsert,
    BulkItem,
    Delete,
}

/// One write's answer (a bulk request gives one per item).
#[derive(Debug, Clone, Serialize)]
pub struct Write {
    pub client: usize,
    pub api: usize,
    pub kind: WriteKind,
    pub key: String,
    pub population: Option<i64>,
    /// The item's status for a bulk item, else the HTTP status; 0 when no answer
    /// came (connection refused, timeout).
    pub status: u16,
    pub event_id: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub sent_ms: u64,
    pub detail: Option<String>,
}

/// One read of the reader.
#[derive(Debug, Clone, Serialize)]
pub struct Read {
    pub key: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub status: u16,
    pub version: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub cities: usize,
    /// Write requests a second, over all clients.
    pub rate: f64,
    pub clients: usize,
    pub reader_sample: usize,
}

/// Runs client `client` against `api` until `stop` turns true.
pub async fn writer(
    client: usize,
    api: (usize, String),
    settings: Settings,
    seed: u64,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Write>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9));
    let zipf = Zipf::new(settings.cities as f64, ZIPF_EXPONENT)?;
    let http = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build()?;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(
        settings.clients as f64 / settings.rate,
    ));
    // A slow answer (a 503 after the publish timeout) skips the missed ticks rather
    // than sending a burst after it: the rate stays steady.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut writes = Vec::new();
    let (api_index, base) = api;
    let pick = |rng: &mut ChaCha8Rng| zipf.sample(rng) as usize - 1;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(writes),
        }
        let sent_ms = start.elapsed().as_millis() as u64;
        let write = |kind, key: String, population| Write {
            client,
            api: api_index,
            kind,
            key,
            population,
            status: 0,
            event_id: None,
            partition: None,
            offset: None,
            sent_ms,
            detail: None,
        };
        let roll = rng.random_range(0..100);
        if roll < 75 {
            let city = pick(&mut rng);
            let population = rng.random_range(0..10_000_000);
            let mut w = write(WriteKind::Upsert, city_key(city), Some(population));
            let answer = http
                .post(format!("{base}/city"))
                .json(&json!({"name": city_name(city), "population": population}))
                .send()
                .await;
            fill(&mut w, answer).await;
            writes.push(w);
        } else if roll < 87 {
            let city = pick(&mut rng);
            let mut w = write(WriteKind::Delete, city_key(city), None);
            let answer = http
                .delete(format!(
                    "{base}/city/{}",
                    city_name(city).replace(' ', "%20")
                ))
                .send()
                .await;
            fill(&mut w, answer).await;
            writes.push(w);
        } else {
            let items: Vec<(usize, i64)> = (0..rng.random_range(BULK_ITEMS))
                .map(|_| (pick(&mut rng), rng.random_range(0..10_000_000)))
                .collect();
            let body: Vec<Value> = items
                .iter()
                .map(|(city, population)| json!({"name": city_name(*city), "population": population}))
                .collect();
            let answer = http
                .post(format!("{base}/cities/bulk"))
                .json(&body)
                .send()
                .await;
            let mut bulk: Vec<Write> = items
                .iter()
                .map(|(city, population)| {
                    write(WriteKind::BulkItem, city_key(*city), Some(*population))
                })
                .collect();
            fill_bulk(&mut bulk, answer).await;
            writes.extend(bulk);
        }
    }
}

async fn fill(w: &mut Write, answer: reqwest::Result<reqwest::Response>) {
    match answer {
        Err(e) => w.detail = Some(e.to_string()),
        Ok(response) => {
            w.status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if w.status == 202 {
                take_acceptance(w, &body);
            } else {
                w.detail = Some(body.to_string());
            }
        }
    }
}

/// The event id, partition and offset a 202 names.
fn take_acceptance(w: &mut Write, body: &Value) {
    w.event_id = body["event_id"].as_str().map(str::to_owned);
    w.partition = body["partition"].as_i64().map(|p| p as i32);
    w.offset = body["offset"].as_i64();
}

async fn fill_bulk(items: &mut [Write], answer: reqwest::Result<reqwest::Response>) {
    let response = match answer {
        Err(e) => {
            for w in items {
                w.detail = Some(e.to_string());
            }
            return;
        }
        Ok(response) => response,
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let answers = body["items"].as_array().cloned().unwrap_or_default();
    for (i, w) in items.iter_mut().enumerate() {
        match answers
            .iter()
            .find(|a| a["index"].as_u64() == Some(i as u64))
        {
            Some(item) => {
                w.status = item["status"].as_u64().unwrap_or(0) as u16;
                if w.status == 202 {
                    take_acceptance(w, item);
                } else {
                    w.detail = Some(item.to_string());
                }
            }
            // A whole-request problem without items (413, a 503 from load
            // shedding): every item gets the request's status.
            None => {
                w.status = status;
                w.detail = Some(body.to_string());
            }
        }
    }
}

/// The cities the reader follows: the hottest half of the sample and a seeded
/// random rest.
pub fn reader_sample(settings: &Settings, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_4EAD);
    let hot = settings.reader_sample / 2;
    let mut sample: Vec<usize> = (0..hot.min(settings.cities)).collect();
    while sample.len() < settings.reader_sample.min(settings.cities) {
        let city = rng.random_range(0..settings.cities);
        if !sample.contains(&city) {
            sample.push(city);
        }
    }
    sample
}

/// Reads the sample round and round, alternating over the APIs, until `stop`.
pub async fn reader(
    apis: Arc<Vec<String>>,
    sample: Vec<usize>,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Read>> {
    let http = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build()?;
    let mut reads = Vec::new();
    let mut turn = 0usize;
    loop {
        for city in &sample {
            if *stop.borrow() {
                return Ok(reads);
            }
            let base = &apis[turn % apis.len()];
            turn += 1;
            let started_ms = start.elapsed().as_millis() as u64;
            let answer = http
                .get(format!(
                    "{base}/city/{}",
                    city_name(*city).replace(' ', "%20")
                ))
                .send()
                .await;
            let (status, version) = match answer {
                Err(_) => (0, None),
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    (status, body["version"].as_i64())
                }
            };
            reads.push(Read {
                key: city_key(*city),
                started_ms,
                finished_ms: start.elapsed().as_millis() as u64,
                status,
                version,
            });
            tokio::select! {
                () = tokio::time::sleep(READ_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return Ok(reads),
            }
        }
    }
}
