//! The indexer's counters, one set per process, exported on `/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::statistics::Statistics;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::dead_letter::{DeadLetterCounters, DeadLetterReason};
use crate::status::StatusBoard;

/// What became of a document written to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexedResult {
    Created,
    Updated,
    Deleted,
    /// A version conflict: already indexed, or something newer is.
    Stale,
}

impl IndexedResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Stale => "stale",
        }
    }
}

/// What became of a message `dlq redrive` republished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedriveResult {
    Indexed,
    /// A newer event of its city reached the index first: the version refused it.
    Superseded,
}

impl RedriveResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Indexed => "indexed",
            Self::Superseded => "superseded",
        }
    }
}

/// What a bulk retry was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The whole request failed.
    Request,
    /// Some items were answered 429 or 5xx.
    Item,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Item => "item",
        }
    }
}

/// What the recreated-topic guard knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardState {
    /// No answer yet: not knowing is not a pass, since consuming now could send
    /// every write of a recreated topic into the index unseen.
    Unknown,
    Matches,
    /// The topic is not the one the index was built from.
    Refusing,
}

impl GuardState {
    pub const ALL: [Self; 3] = [Self::Unknown, Self::Matches, Self::Refusing];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Matches => "matches",
            Self::Refusing => "refusing",
        }
    }
}

/// Label values are written as the lower-case names dashboards and alerts use.
macro_rules! label_value_as_str {
    ($($label:ty),*) => {$(
        impl EncodeLabelValue for $label {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    )*};
}
label_value_as_str!(
    IndexedResult,
    RedriveResult,
    RetryReason,
    DeadLetterReason,
    GuardState
);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IndexedLabels {
    result: IndexedResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RedriveLabels {
    result: RedriveResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetryLabels {
    reason: RetryReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    reason: DeadLetterReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GuardLabels {
    state: GuardState,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabels {
    partition: i32,
}

pub struct Metrics {
    consumed: Counter,
    indexed: Family<IndexedLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    redriven: Family<RedriveLabels, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    bulk_documents: Histogram,
    bulk_duration: Histogram,
    end_to_end_latency: Histogram,
    consumer_lag: Family<PartitionLabels, Gauge>,
    committed_offset: Family<PartitionLabels, Gauge>,
    partitions_unfetched: Gauge,
    unfetched: Mutex<UnfetchedPartitions>,
    /// Messages consumed and not yet handed to the writer.
    pub messages_waiting: Gauge,
    pub ready: Gauge,
    pub topic_recreated: Gauge,
    pub dead_letter: DeadLetterCounters,
    /// What `/status` reports beside the counters.
    pub status: Arc<StatusBoard>,
    pub dead_letters_writable: Gauge,
    guard_state: Family<GuardLabels, Gauge>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let status = Arc::new(StatusBoard::default());
        let metrics = Self {
            consumed: Counter::default(),
            indexed: Family::default(),
            retries: Family::default(),
            redriven: Family::default(),
            dead_letters: Family::default(),
            bulk_documents: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            bulk_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            end_to_end_latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            consumer_lag: Family::default(),
            committed_offset: Family::default(),
            partitions_unfetched: Gauge::default(),
            unfetched: Mutex::default(),
            messages_waiting: Gauge::default(),
            ready: Gauge::default(),
            topic_recreated: Gauge::default(),
            dead_letter: DeadLetterCounters {
                status: status.clone(),
                ..DeadLetterCounters::default()
            },
            status,
            dead_letters_writable: Gauge::default(),
            guard_state: Family::default(),
        };
        metrics.dead_letters_writable.set(1);
        metrics.guard(GuardState::Unknown);
        // Every result starts at 0, so a rate over it exists before the first redrive.
        for result in [RedriveResult::Indexed, RedriveResult::Superseded] {
            drop(metrics.redriven.get_or_create(&RedriveLabels { result }));
        }
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
            "redriven_documents",
            "Messages republished by dlq redrive, as the indexer wrote them: indexed, or superseded (a newer event of the city was indexed first)",
            metrics.redriven.clone(),
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
        registry.register(
            "consumer_lag",
            "Messages between the partition's end and the group's committed offset",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "committed_offset",
            "The group's committed offset per assigned partition",
            metrics.committed_offset.clone(),
        );
        registry.register(
            "partitions_unfetched",
            "Assigned partitions librdkafka has not started fetching in two statistics reports in a row (fetch state none): assigned but not read until the next rebalance or a restart",
            metrics.partitions_unfetched.clone(),
        );
        registry.register(
            "messages_waiting",
            "Messages consumed and not yet handed to the bulk writer: the next batch and what arrived beyond it (bounded while consumption is paused)",
            metrics.messages_waiting.clone(),
        );
        registry.register(
            "ready",
            "1 when set up, writing to the engine works and the topic is the one the index was built from",
            metrics.ready.clone(),
        );
        registry.register(
            "topic_recreated",
            "1 while the indexer refuses to write because the topic was deleted and recreated",
            metrics.topic_recreated.clone(),
        );
        registry.register(
            "dead_letter_write_failures",
            "Dead-letter writes that failed: retried, or written as a stub when Kafka can never take them whole",
            metrics.dead_letter.write_failures.clone(),
        );
        registry.register(
            "dead_letter_stubs",
            "Dead letters written as stubs (origin, reason, payload size and SHA-256, no payload): too large or invalid to copy whole",
            metrics.dead_letter.stubs.clone(),
        );
        registry.register(
            "topic_guard",
            "1 for the recreated-topic guard's current state (unknown: no answer yet, matches, refusing), 0 for the others",
            metrics.guard_state.clone(),
        );
        registry.register(
            "dead_letters_writable",
            "0 while dead-letter writes fail (the indexer is then not ready: nothing behind the poison can be committed)",
            metrics.dead_letters_writable.clone(),
        );
        metrics
    }

    pub fn guard(&self, now: GuardState) {
        for state in GuardState::ALL {
            self.guard_state
                .get_or_create(&GuardLabels { state })
                .set(i64::from(state == now));
        }
    }

    pub fn consumed(&self, count: usize) {
        self.consumed.inc_by(count as u64);
    }

    pub fn indexed(&self, result: IndexedResult, count: u64) {
        self.indexed
            .get_or_create(&IndexedLabels { result })
            .inc_by(count);
    }

    /// Documents written since start: created, updated or deleted (stale ones are
    /// not).
    pub fn written_total(&self) -> u64 {
        [
            IndexedResult::Created,
            IndexedResult::Updated,
            IndexedResult::Deleted,
        ]
        .into_iter()
        .filter_map(|result| self.indexed.get(&IndexedLabels { result }).map(|c| c.get()))
        .sum()
    }

    /// Messages dead-lettered since start, whatever the reason.
    pub fn dead_lettered_total(&self) -> u64 {
        DeadLetterReason::ALL
            .into_iter()
            .filter_map(|reason| {
                self.dead_letters
                    .get(&DeadLetterLabels { reason })
                    .map(|c| c.get())
            })
            .sum()
    }

    pub fn redriven(&self, result: RedriveResult) {
        self.redriven.get_or_create(&RedriveLabels { result }).inc();
    }

    pub fn retried(&self, reason: RetryReason, count: usize) {
        self.retries
            .get_or_create(&RetryLabels { reason })
            .inc_by(count as u64);
    }

    pub fn dead_lettered(&self, reason: DeadLetterReason) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels { reason })
            .inc();
    }

    pub fn bulk_sent(&self, documents: usize, seconds: f64) {
        self.bulk_documents.observe(documents as f64);
        self.bulk_duration.observe(seconds);
    }

    pub fn end_to_end(&self, seconds: f64) {
        self.end_to_end_latency.observe(seconds);
    }

    /// Takes lag and committed offsets from librdkafka's periodic statistics, for
    /// the partitions this member is assigned.
    pub fn record_statistics(&self, statistics: &Statistics) {
        let fetch_states = statistics.topics.values().flat_map(|topic| {
            topic
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired)
                .map(|p| (p.partition, p.fetch_state.as_str()))
        });
        let mut unfetched = self.unfetched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stuck) = unfetched.report(fetch_states) {
            tracing::warn!(
                partitions = ?stuck,
                "assigned partitions librdkafka has not started fetching: they are not read until the next rebalance or a restart"
            );
        }
        self.partitions_unfetched.set(unfetched.count() as i64);
        drop(unfetched);
        for topic in statistics.topics.values() {
            for partition in topic.partitions.values() {
                // librdkafka reports an internal "-1" partition and, until a
                // partition is fetched, -1001 for unknown offsets.
                if partition.partition < 0 || !partition.desired {
                    continue;
                }
                let labels = PartitionLabels {
                    partition: partition.partition,
                };
                if partition.consumer_lag >= 0 {
                    self.consumer_lag
                        .get_or_create(&labels)
                        .set(partition.consumer_lag);
                }
                if partition.committed_offset >= 0 {
                    self.committed_offset
                        .get_or_create(&labels)
                        .set(partition.committed_offset);
                }
            }
        }
    }
}

/// Assigned partitions whose fetcher librdkafka has not started (fetch state
/// `none`), from one statistics report to the next. An assignment starts its
/// fetchers within milliseconds, so one still unstarted a report later (5 s) was
/// dropped: librdkafka drops a fetch start that an application pause or resume
/// overtakes, and nothing starts it again short of a new assignment. The consumer
/// avoids making that pause (see `GroupContext::pre_rebalance`); this tells if it
/// happens anyway.
#[derive(Debug, Default)]
pub struct UnfetchedPartitions {
    /// Unstarted at the latest report.
    latest: BTreeSet<i32>,
    /// Unstarted at the latest report and the one before.
    stuck: BTreeSet<i32>,
}

impl UnfetchedPartitions {
    /// Takes one report's `(partition, fetch state)` of the assigned partitions;
    /// returns the partitions now unstarted for two reports when that set changed
    /// and is not empty, to be told once.
    pub fn report<'a>(
        &mut self,
        fetch_states: impl IntoIterator<Item = (i32, &'a str)>,
    ) -> Option<Vec<i32>> {
        let unstarted: BTreeSet<i32> = fetch_states
            .into_iter()
            .filter(|(_, state)| *state == "none")
            .map(|(partition, _)| partition)
            .collect();
        let stuck: BTreeSet<i32> = unstarted.intersection(&self.latest).copied().collect();
        self.latest = unstarted;
        let changed = stuck != self.stuck;
        self.stuck = stuck;
        (changed && !self.stuck.is_empty()).then(|| self.stuck.iter().copied().collect())
    }

    /// Partitions unstarted in two reports in a row.
    pub fn count(&self) -> usize {
        self.stuck.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_unstarted_in_two_reports_in_a_row_is_told_once() {
        let mut unfetched = UnfetchedPartitions::default();
        // Just assigned: not started yet is no finding.
        assert_eq!(unfetched.report([(0, "none"), (1, "none")]), None);
        assert_eq!(unfetched.count(), 0);
        // Partition 0 started; partition 1 still has not.
        assert_eq!(
            unfetched.report([(0, "active"), (1, "none")]),
            Some(vec![1])
        );
        assert_eq!(unfetched.count(), 1);
        // Told once while it stays so; still counted.
        assert_eq!(unfetched.report([(0, "active"), (1, "none")]), None);
        assert_eq!(unfetched.count(), 1);
        // A new assignment started it.
        assert_eq!(unfetched.report([(0, "active"), (1, "offset-query")]), None);
        assert_eq!(unfetched.count(), 0);
    }

    #[test]
    fn every_redrive_result_is_exposed_before_the_first_redrive() {
        let mut registry = Registry::default();
        let _metrics = Metrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encoded");
        // A dashboard's rate() and an alert need the series before the first redrive.
        for result in ["indexed", "superseded"] {
            let line = format!("citypop_indexer_redriven_documents_total{{result=\"{result}\"}} 0");
            assert!(text.contains(&line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn partitions_started_in_between_are_not_stuck() {
        let mut unfetched = UnfetchedPartitions::default();
        assert_eq!(unfetched.report([(0, "none"), (1, "active")]), None);
        assert_eq!(unfetched.report([(0, "active"), (1, "none")]), None);
        assert_eq!(unfetched.count(), 0);
    }
}
