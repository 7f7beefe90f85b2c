//! The end checks: each one judges what was recorded during the run against the
//! topic (the truth) and the index, and names the cities and offsets of every
//! failure.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::topic::{DeadLetter, Fold, Newest};
use crate::workload::{Read, Write};

/// Failures listed per check; the rest is counted.
const SHOWN: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub summary: String,
    pub failures: Vec<String>,
}

impl Check {
    fn judge(name: &'static str, summary: String, failures: Vec<String>) -> Self {
        let count = failures.len();
        let mut shown: Vec<String> = failures.into_iter().take(SHOWN).collect();
        if count > SHOWN {
            shown.push(format!("… and {} more", count - SHOWN));
        }
        Self {
            name,
            passed: count == 0,
            summary,
            failures: shown,
        }
    }
}

/// A poison message the run produced, and where it landed.
#[derive(Debug, Clone, Serialize)]
pub struct Poison {
    pub key: String,
    pub reason: &'static str,
    pub partition: i32,
    pub offset: i64,
}

/// Every write answered 202 is in the topic where the answer said.
pub fn accepted_writes_are_in_the_topic(writes: &[Write], fold: &Fold) -> Check {
    let accepted: Vec<&Write> = writes.iter().filter(|w| w.status == 202).collect();
    let failures = accepted
        .iter()
        .filter_map(|w| {
            let id = w.event_id.as_deref().unwrap_or("");
            let found = fold.event_ids.get(id);
            (found != Some(&(w.partition.unwrap_or(-1), w.offset.unwrap_or(-1)))).then(|| {
                format!(
                    "{} event {id} answered at {}/{} is {}",
                    w.key,
                    w.partition.unwrap_or(-1),
                    w.offset.unwrap_or(-1),
                    found.map_or("not in the topic".into(), |(p, o)| format!(
                        "in the topic at {p}/{o}"
                    ))
                )
            })
        })
        .collect();
    Check::judge(
        "every 202 is in the topic",
        format!(
            "{} writes answered 202, {} events in the topic",
            accepted.len(),
            fold.messages
        ),
        failures,
    )
}

/// For each city the index holds the newest indexable event of the topic (by
/// offset), or a soft delete / nothing when that was a delete; and nothing else.
pub fn index_is_the_fold(
    writes: &[Write],
    fold: &Fold,
    documents: &BTreeMap<String, Value>,
) -> Check {
    let mut failures = Vec::new();
    for (key, event) in &fold.newest {
        let doc = documents.get(key);
        let version = doc.and_then(|d| d["version"].as_i64());
        let partition = doc.and_then(|d| d["partition"].as_i64());
        let deleted = doc.is_some_and(|d| d["deleted"].as_bool() == Some(true));
        let ok = match &event.newest {
            Newest::Update { population } => {
                !deleted
                    && version == Some(event.offset)
                    && partition == Some(i64::from(event.partition))
                    && doc.and_then(|d| d["population"].as_i64()) == Some(*population)
            }
            Newest::Delete => doc.is_none() || (deleted && version == Some(event.offset)),
        };
        if !ok {
            failures.push(format!(
                "{key}: topic's newest is {:?} at {}/{}, index holds {}",
                event.newest,
                event.partition,
                event.offset,
                doc.map_or("nothing".into(), Value::to_string)
            ));
        }
    }
    for key in documents.keys() {
        if !fold.newest.contains_key(key) {
            failures.push(format!(
                "{key}: in the index but no indexable event in the topic: {}",
                documents[key]
            ));
        }
    }
    // The API's answers agree: no 202 is newer than what the index shows.
    let mut newest_accepted: HashMap<&str, i64> = HashMap::new();
    for w in writes.iter().filter(|w| w.status == 202) {
        let offset = w.offset.unwrap_or(-1);
        let entry = newest_accepted.entry(&w.key).or_insert(offset);
        *entry = (*entry).max(offset);
    }
    for (key, offset) in &newest_accepted {
        let indexed = fold.newest.get(*key).map(|e| e.offset);
        if indexed < Some(*offset) {
            failures.push(format!(
                "{key}: a write was answered 202 at offset {offset}, the topic's newest is {indexed:?}"
            ));
        }
    }
    Check::judge(
        "the index is the fold of the topic",
        format!(
            "{} cities in the topic, {} documents in the index, {} cities written with a 202",
            fold.newest.len(),
            documents.len(),
            newest_accepted.len()
        ),
        failures,
    )
}

/// Every write not answered 202 was answered 503: the workload sends only valid
/// input, so a 4xx is as wrong as a 500 or no answer at all.
pub fn refusals_are_503(writes: &[Write]) -> Check {
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for w in writes {
        *statuses.entry(w.status).or_default() += 1;
    }
    let failures = writes
        .iter()
        .filter(|w| w.status != 202 && w.status != 503)
        .map(|w| {
            format!(
                "{:?} of {} (client {}, api {}, at {} ms) answered {}: {}",
                w.kind,
                w.key,
                w.client,
                w.api,
                w.sent_ms,
                w.status,
                w.detail.as_deref().unwrap_or("")
            )
        })
        .collect();
    Check::judge(
        "every other write answer is a 503",
        format!("write answers by status: {statuses:?}"),
        failures,
    )
}

/// No read saw a city's version go down, nor a 404 for a city it had read before
/// (so indexed before that read started) unless a newer delete exists.
pub fn reads_never_go_back(reads: &[Read], fold: &Fold) -> Check {
    let mut failures = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut last: HashMap<&str, (i64, u64)> = HashMap::new();
    for read in reads {
        *statuses.entry(read.status).or_default() += 1;
        match read.status {
            200 => {
                let version = read.version.unwrap_or(-1);
                if let Some((seen, at)) = last.get(read.key.as_str())
                    && version < *seen
                {
                    failures.push(format!(
                        "{}: version {version} read at {} ms after version {seen} read at {at} ms",
                        read.key, read.started_ms
                    ));
                }
                let entry = last.entry(&read.key).or_insert((version, read.finished_ms));
                if version >= entry.0 {
                    *entry = (version, read.finished_ms);
                }
            }
            404 => {
                if let Some((seen, at)) = last.get(read.key.as_str()) {
                    let deleted_later = fold
                        .deletes
                        .get(&read.key)
                        .is_some_and(|ds| ds.iter().any(|d| d > seen));
                    if !deleted_later {
                        failures.push(format!(
                            "{}: 404 at {} ms after version {seen} read at {at} ms, and no newer delete in the topic",
                            read.key, read.started_ms
                        ));
                    }
                }
            }
            // The engine unavailable or slow: what a retry cures, documented.
            503 => {}
            other => failures.push(format!(
                "{}: read at {} ms answered {other}",
                read.key, read.started_ms
            )),
        }
    }
    Check::judge(
        "reads never go back",
        format!(
            "{} reads of {} cities, by status: {statuses:?}",
            reads.len(),
            last.len()
        ),
        failures,
    )
}

/// Every poison message is in the dead-letter topic with its context, and nothing
/// else is. A second copy of one is accepted only after a crash: the dead letter is
/// acknowledged before its offset is committed, so a process killed between the two
/// dead-letters it again when the event is redelivered (redrive counts those as
/// duplicates).
pub fn dead_letters_are_the_poison(
    topic: &str,
    poison: &[Poison],
    letters: &[DeadLetter],
    crashes: bool,
) -> Check {
    let mut failures = Vec::new();
    let mut copies: HashMap<(i32, i64), usize> = HashMap::new();
    for letter in letters {
        let (origin_topic, partition, offset) = &letter.origin;
        let Some(p) = poison
            .iter()
            .find(|p| p.partition == *partition && p.offset == *offset)
        else {
            failures.push(format!(
                "dead letter of {} from {origin_topic}/{partition}/{offset} ({}: {}) is no poison",
                letter.key, letter.reason, letter.error
            ));
            continue;
        };
        *copies.entry((*partition, *offset)).or_default() += 1;
        if origin_topic != topic
            || letter.reason != p.reason
            || letter.key != p.key
            || letter.error.is_empty()
        {
            failures.push(format!(
                "dead letter of {} from {origin_topic}/{partition}/{offset} has the wrong context: reason {:?}, error {:?} (expected {})",
                letter.key, letter.reason, letter.error, p.reason
            ));
        }
    }
    let mut duplicates = 0;
    for p in poison {
        match copies.get(&(p.partition, p.offset)).copied().unwrap_or(0) {
            0 => failures.push(format!(
                "{} poison {} at {}/{} is not in the dead-letter topic",
                p.reason, p.key, p.partition, p.offset
            )),
            1 => {}
            n => {
                duplicates += n - 1;
                if !crashes {
                    failures.push(format!(
                        "{} poison {} at {}/{} is in the dead-letter topic {n} times, with no crash to explain it",
                        p.reason, p.key, p.partition, p.offset
                    ));
                }
            }
        }
    }
    Check::judge(
        "the dead letters are the poison, once each",
        format!(
            "{} poison messages, {} dead letters ({duplicates} second copies after crashes)",
            poison.len(),
            letters.len()
        ),
        failures,
    )
}

/// Peak RSS of a service process.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub service: String,
    pub peak_mib: f64,
    pub target_mib: f64,
}

pub fn memory_within_targets(samples: &[Rss]) -> Check {
    let failures = samples
        .iter()
        .filter(|s| s.peak_mib > s.target_mib)
        .map(|s| {
            format!(
                "{}: peak RSS {:.1} MiB over its {} MiB target",
                s.service, s.peak_mib, s.target_mib
            )
        })
        .collect();
    let peak = |prefix: &str| {
        samples
            .iter()
            .filter(|s| s.service.starts_with(prefix))
            .map(|s| s.peak_mib)
            .fold(0.0, f64::max)
    };
    Check::judge(
        "peak RSS within targets",
        format!(
            "{} processes; highest producer-api {:.1} MiB, highest indexer {:.1} MiB",
            samples.len(),
            peak("producer-api"),
            peak("indexer")
        ),
        failures,
    )
}

/// The admin commands the schedule ran succeeded, and redrive republished each
/// `schema` poison exactly once.
pub fn admin_commands(
    outcomes: &[(String, Result<String, String>)],
    redriven: Option<(u64, usize)>,
) -> Check {
    let mut failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(what, outcome)| outcome.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect();
    if let Some((redriven, expected)) = redriven
        && redriven != expected as u64
    {
        failures.push(format!(
            "dlq redrive republished {redriven} schema dead letters, {expected} were poison"
        ));
    }
    Check::judge(
        "the admin commands succeeded",
        format!("{} commands run", outcomes.len()),
        failures,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Event;

    fn read(key: &str, at: u64, status: u16, version: Option<i64>) -> Read {
        Read {
            key: key.into(),
            started_ms: at,
            finished_ms: at + 1,
            status,
            version,
        }
    }

    #[test]
    fn a_version_going_down_or_a_404_without_a_delete_fails_and_a_delete_explains_a_404() {
        let mut fold = Fold::default();
        let ok = [
            read("a", 0, 404, None),
            read("a", 1, 200, Some(5)),
            read("a", 2, 200, Some(5)),
            read("a", 3, 503, None),
            read("a", 4, 200, Some(9)),
        ];
        assert!(reads_never_go_back(&ok, &fold).passed);
        let down = [read("a", 0, 200, Some(9)), read("a", 1, 200, Some(5))];
        assert!(!reads_never_go_back(&down, &fold).passed);
        let gone = [read("a", 0, 200, Some(9)), read("a", 1, 404, None)];
        assert!(!reads_never_go_back(&gone, &fold).passed);
        fold.deletes.insert("a".into(), vec![12]);
        assert!(reads_never_go_back(&gone, &fold).passed);
    }

    #[test]
    fn the_index_must_hold_the_newest_event_of_each_city() {
        let mut fold = Fold::default();
        fold.newest.insert(
            "a".into(),
            Event {
                partition: 1,
                offset: 7,
                newest: Newest::Update { population: 3 },
            },
        );
        fold.newest.insert(
            "b".into(),
            Event {
                partition: 2,
                offset: 4,
                newest: Newest::Delete,
            },
        );
        let mut docs = BTreeMap::new();
        docs.insert(
            "a".to_owned(),
            serde_json::json!({"version": 7, "partition": 1, "population": 3}),
        );
        assert!(index_is_the_fold(&[], &fold, &docs).passed);
        docs.insert(
            "b".to_owned(),
            serde_json::json!({"version": 3, "partition": 2, "population": 1}),
        );
        assert!(!index_is_the_fold(&[], &fold, &docs).passed);
        docs.insert(
            "b".to_owned(),
            serde_json::json!({"version": 4, "partition": 2, "deleted": true}),
        );
        assert!(index_is_the_fold(&[], &fold, &docs).passed);
        docs.insert(
            "a".to_owned(),
            serde_json::json!({"version": 6, "partition": 1, "population": 2}),
        );
        assert!(!index_is_the_fold(&[], &fold, &docs).passed);
    }
}
