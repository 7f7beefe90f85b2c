//! `GET /status` and `indexer status`: what an operator asks first when the indexer
//! is behind, in one answer (as Kafka Connect's `/connectors/{name}/status` does):
//! the member and its partitions with their committed and end offsets, lag and
//! pause, the topic guard's verdict, the last error, and what was done since start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::consumer::Consumer;
use serde::{Deserialize, Serialize};

use crate::config::{Config, StatusArgs};
use crate::consumer::GroupConsumer;
use crate::offsets::OffsetReader;

/// What the pipeline records as it goes, for `/status`.
#[derive(Debug, Default)]
pub struct StatusBoard {
    recorded: Mutex<Recorded>,
    /// Set once the consumer exists; before that `/status` has no partitions.
    group: OnceLock<GroupView>,
}

#[derive(Debug, Default, Clone)]
struct Recorded {
    guard: Option<String>,
    last_error: Option<LastError>,
    engine_answered_at: Option<DateTime<Utc>>,
}

/// The most recent failure, whichever stage it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// `bulk` (a write to the engine) or `dead_letter` (a write to the dead-letter
    /// topic).
    pub stage: String,
    pub error: String,
    pub at: String,
}

/// The consumer group side of the answer.
struct GroupView {
    /// Weak: the consumer's context holds the metrics, which hold this board, so a
    /// strong reference here was a cycle that kept the consumer from ever being
    /// dropped, and so from leaving its group on shutdown (the others then waited
    /// out the session timeout for its partitions).
    consumer: Weak<GroupConsumer>,
    offsets: OffsetReader,
    topic: String,
    group: String,
}

impl std::fmt::Debug for GroupView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupView")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// What was done since start, from the metrics' counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Done {
    pub indexed: u64,
    pub dead_lettered: u64,
}

/// The `/status` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub ready: bool,
    pub topic: Option<String>,
    pub group: Option<String>,
    pub member_id: Option<String>,
    pub partitions: Vec<PartitionStatus>,
    /// The topic guard's verdict: `matches`, `unknown` or the refusal.
    pub guard: Option<String>,
    pub last_error: Option<LastError>,
    /// When the engine last answered a bulk request (whatever it answered).
    pub engine_answered_at: Option<String>,
    pub indexed_since_start: u64,
    pub dead_lettered_since_start: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// The group's committed position: the next offset it will read.
    pub committed: Option<i64>,
    /// The next offset to be written to the partition.
    pub end: Option<i64>,
    pub lag: Option<i64>,
    pub paused: bool,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl StatusBoard {
    pub fn watch_group(
        &self,
        consumer: &Arc<GroupConsumer>,
        offsets: OffsetReader,
        topic: String,
        group: String,
    ) {
        let _ = self.group.set(GroupView {
            consumer: Arc::downgrade(consumer),
            offsets,
            topic,
            group,
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut Recorded) -> T) -> T {
        f(&mut self.recorded.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn guard(&self, verdict: String) {
        self.with(|r| r.guard = Some(verdict));
    }

    pub fn error(&self, stage: &str, error: &str) {
        let last = LastError {
            stage: stage.to_owned(),
            error: error.to_owned(),
            at: now(),
        };
        self.with(|r| r.last_error = Some(last));
    }

    pub fn engine_answered(&self) {
        self.with(|r| r.engine_answered_at = Some(Utc::now()));
    }

    /// The answer now, with what the counters say was done since start; asks Kafka
    /// for offsets, so it takes a moment.
    pub async fn report(&self, ready: bool, done: Done) -> Status {
        let recorded = self.with(|r| r.clone());
        let mut status = Status {
            ready,
            topic: None,
            group: None,
            member_id: None,
            partitions: Vec::new(),
            guard: recorded.guard,
            last_error: recorded.last_error,
            engine_answered_at: recorded
                .engine_answered_at
                .map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            indexed_since_start: done.indexed,
            dead_lettered_since_start: done.dead_lettered,
        };
        if let Some(view) = self.group.get() {
            status.topic = Some(view.topic.clone());
            status.group = Some(view.group.clone());
            // Gone once the indexer stopped: no member, no partitions.
            if let Some(consumer) = view.consumer.upgrade() {
                status.member_id = crate::native::member_id(consumer.client());
                status.partitions = view.partitions(&consumer).await;
            }
        }
        status
    }
}

impl GroupView {
    async fn partitions(&self, consumer: &GroupConsumer) -> Vec<PartitionStatus> {
        let assigned: Vec<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(error) => {
                tracing::debug!(%error, "reading the assignment for /status");
                Vec::new()
            }
        };
        // Each source may fail on its own (Kafka down, say): what is known is shown.
        let ends = self
            .offsets
            .end_offsets(&self.topic)
            .await
            .unwrap_or_default();
        let committed = self
            .offsets
            .committed(&self.topic, assigned.iter().copied())
            .await
            .unwrap_or_default();
        let paused = consumer.context().is_paused();
        partition_rows(&assigned, &committed, &ends, paused)
    }
}

fn partition_rows(
    assigned: &[i32],
    committed: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
    paused: bool,
) -> Vec<PartitionStatus> {
    let mut rows: Vec<PartitionStatus> = assigned
        .iter()
        .map(|&partition| {
            let committed = committed.get(&partition).copied();
            let end = ends.get(&partition).copied();
            PartitionStatus {
                partition,
                committed,
                end,
                // Nothing committed yet: everything up to the end is to be read.
                lag: end.map(|end| (end - committed.unwrap_or(0)).max(0)),
                paused,
            }
        })
        .collect();
    rows.sort_by_key(|row| row.partition);
    rows
}

/// `indexer status`: asks a running indexer and prints its answer.
pub async fn print(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    let base = args.url.clone().unwrap_or_else(|| {
        let mut address = config.health_listen;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{address}")
    });
    let url = format!("{}/status", base.trim_end_matches('/'));
    let status: Status = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("asking {url}"))?
        .json()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The answer as a table for a person.
pub fn render(status: &Status) -> String {
    let dash = || "-".to_owned();
    let mut out = String::new();
    out.push_str(&format!(
        "ready: {}\ntopic: {}  group: {}  member: {}\nguard: {}\n",
        if status.ready { "yes" } else { "no" },
        status.topic.clone().unwrap_or_else(dash),
        status.group.clone().unwrap_or_else(dash),
        status.member_id.clone().unwrap_or_else(dash),
        status.guard.clone().unwrap_or_else(dash),
    ));
    out.push_str(&format!(
        "indexed since start: {}  dead-lettered since start: {}  engine last answered: {}\n",
        status.indexed_since_start,
        status.dead_lettered_since_start,
        status.engine_answered_at.clone().unwrap_or_else(dash),
    ));
    match &status.last_error {
        Some(e) => out.push_str(&format!(
            "last error: {} at {}: {}\n",
            e.stage, e.at, e.error
        )),
        None => out.push_str("last error: none\n"),
    }
    out.push_str(&format!(
        "{:>9}  {:>12}  {:>12}  {:>10}  {}\n",
        "partition", "committed", "end", "lag", "paused"
    ));
    let number = |n: Option<i64>| n.map_or_else(dash, |n| n.to_string());
    for p in &status.partitions {
        out.push_str(&format!(
            "{:>9}  {:>12}  {:>12}  {:>10}  {}\n",
            p.partition,
            number(p.committed),
            number(p.end),
            number(p.lag),
            if p.paused { "yes" } else { "no" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_distance_from_the_committed_position_to_the_end() {
        let rows = partition_rows(
            &[2, 0],
            &BTreeMap::from([(0, 40)]),
            &BTreeMap::from([(0, 50), (2, 7)]),
            true,
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].partition,
                rows[0].committed,
                rows[0].end,
                rows[0].lag
            ),
            (0, Some(40), Some(50), Some(10))
        );
        assert_eq!(
            (rows[1].partition, rows[1].committed, rows[1].lag),
            (2, None, Some(7)),
            "nothing committed: all of it is lag"
        );
        assert!(rows.iter().all(|r| r.paused));
    }

    #[tokio::test]
    async fn the_board_reports_what_was_recorded() {
        let board = StatusBoard::default();
        board.error("bulk", "connection refused");
        board.guard("matches".into());
        let done = Done {
            indexed: 2,
            dead_lettered: 1,
        };
        let status = board.report(false, done).await;
        assert_eq!(status.indexed_since_start, 2);
        assert_eq!(status.dead_lettered_since_start, 1);
        assert_eq!(
            status.last_error.as_ref().map(|e| e.stage.as_str()),
            Some("bulk")
        );
        assert!(render(&status).contains("last error: bulk at"));
        assert!(status.partitions.is_empty(), "no consumer yet");
    }
}
