//! The indexer's counters, one set per process, exported on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

pub struct Metrics {
    consumed: Counter,
    indexed: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    bulk_documents: Histogram,
    bulk_duration: Histogram,
    end_to_end_latency: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            consumed: Counter::default(),
            indexed: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            bulk_documents: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            bulk_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            end_to_end_latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
        };
        let registry = registry.sub_registry_with_prefix("citypop_indexer");
        registry.register(
            "events_consumed",
            "Kafka messages consumed",
            metrics.consumed.clone(),
        );
        registry.register(
            "documents_indexed",
            "Documents written, by result: created, updated, deleted, stale (version conflict: already indexed)",
            metrics.indexed.clone(),
        );
        registry.register(
            "retries",
            "Bulk retries, by reason: request (the whole request failed) or item (429/5xx items)",
            metrics.retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages sent to the dead-letter topic, by reason: decode, schema, rejected",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "bulk_documents",
            "Documents per bulk request",
            metrics.bulk_documents.clone(),
        );
        registry.register(
            "bulk_duration_seconds",
            "Duration of one bulk request",
            metrics.bulk_duration.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "Time from an event's occurred_at to its document being indexed",
            metrics.end_to_end_latency.clone(),
        );
        metrics
    }

    pub fn consumed(&self, count: usize) {
        self.consumed.inc_by(count as u64);
    }

    pub fn indexed(&self, result: &'static str) {
        self.indexed.get_or_create(&[("result", result)]).inc();
    }

    pub fn retried(&self, reason: &'static str, count: usize) {
        self.retries
            .get_or_create(&[("reason", reason)])
            .inc_by(count as u64);
    }

    pub fn dead_lettered(&self, reason: &'static str) {
        self.dead_letters.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn bulk_sent(&self, documents: usize, seconds: f64) {
        self.bulk_documents.observe(documents as f64);
        self.bulk_duration.observe(seconds);
    }

    pub fn end_to_end(&self, seconds: f64) {
        self.end_to_end_latency.observe(seconds);
    }
}
