//! The optional in-process cache of reads: live cities only, each for at most its
//! time to live. producer-api never sees the indexer's writes, so nothing
//! invalidates an entry: a cached read may be up to the TTL older than the index.
//! Reads with `min_version` never use it.

use std::sync::Arc;
use std::time::Duration;

use citypop_schemas::CityKey;
use citypop_schemas::document::CityDocument;
use moka::future::Cache;

use crate::metrics::{CacheResult, Metrics};

/// How long and how many cities are kept.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Zero turns the cache off.
    pub ttl: Duration,
    pub max_entries: u64,
}

/// Live cities read lately, or nothing when the cache is off.
pub struct ReadCache {
    cities: Option<Cache<CityKey, Arc<CityDocument>>>,
    metrics: Arc<Metrics>,
}

impl ReadCache {
    pub fn new(settings: CacheSettings, metrics: Arc<Metrics>) -> Self {
        let cities = (!settings.ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_live(settings.ttl)
                .build()
        });
        Self { cities, metrics }
    }

    /// The city as read at most the TTL ago; `None` when it is not cached (or the
    /// cache is off, which counts neither a hit nor a miss).
    pub async fn get(&self, key: &CityKey) -> Option<Arc<CityDocument>> {
        let cities = self.cities.as_ref()?;
        let found = cities.get(key).await;
        self.metrics.read_cache_looked_up(if found.is_some() {
            CacheResult::Hit
        } else {
            CacheResult::Miss
        });
        found
    }

    /// Keeps what a read found, when the city is live. Absent and deleted cities
    /// are not kept: a city created meanwhile shows at once, and reads of names that
    /// do not exist cannot push real cities out.
    pub async fn keep(&self, key: &CityKey, document: &CityDocument) {
        if let Some(cities) = &self.cities
            && !document.deleted
        {
            cities.insert(key.clone(), Arc::new(document.clone())).await;
        }
    }
}
