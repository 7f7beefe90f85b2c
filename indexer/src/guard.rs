//! The recreated-topic guard. An index is bound to one incarnation of its topic: a
//! deleted and recreated topic restarts its offsets at 0, and since offsets are the
//! documents' versions, every new write would be silently refused as stale. The
//! guard refuses a topic whose partition ends at or below the highest version the
//! index holds for it, or below the position the consumer group committed, and a
//! topic whose partition count differs from the one the index was built from
//! (recorded in the index's `_meta`): keys moved partitions, so versions no longer
//! compare. Where the broker tells topic ids (Kafka 2.8 and later), an id other
//! than the one recorded when the index was created names another incarnation
//! outright.

use std::collections::BTreeMap;

use anyhow::Context;
use elasticsearch::{Elasticsearch, SearchParts};
use serde_json::{Value, json};

use crate::index_admin::{self, TopicBinding};
use crate::offsets::OffsetReader;

/// The most partitions the version query reports on; far above any real topic.
const MAX_PARTITIONS: u32 = 10_000;

/// Why the indexer refuses to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error(
        "topic {topic} partition {partition} ends at offset {end_offset} but the index already holds version {indexed_version}: \
         the topic was deleted and recreated, so every write would be ignored as stale; \
         rebuild into a new index from the new topic (indexer replay)"
    )]
    EndBelowVersion {
        topic: String,
        partition: i32,
        end_offset: i64,
        indexed_version: i64,
    },
    #[error(
        "topic {topic} partition {partition} ends at offset {end_offset} but the consumer group committed {committed}: \
         the topic was deleted and recreated, and reading on from the old position would skip its first events; \
         reset the group's offsets and rebuild into a new index (indexer replay)"
    )]
    CommittedPastEnd {
        topic: String,
        partition: i32,
        committed: i64,
        end_offset: i64,
    },
    #[error(
        "topic {topic} has id {now} but the index was built from the topic with id {built_from}: \
         the topic was deleted and recreated, so its offsets (the versions) start again; \
         rebuild into a new index from the new topic (indexer replay)"
    )]
    TopicIdChanged {
        topic: String,
        built_from: String,
        now: String,
    },
    #[error(
        "topic {topic} has {now} partitions but the index was built from {built_from}: \
         cities moved partitions, so their versions (offsets) no longer compare; \
         rebuild into a new index (indexer replay)"
    )]
    PartitionsChanged {
        topic: String,
        built_from: i32,
        now: i32,
    },
}

/// What the topic looks like now.
#[derive(Debug, Clone, Default)]
pub struct TopicNow {
    /// Per partition, the next offset to be written.
    pub ends: BTreeMap<i32, i64>,
    /// Per partition, the consumer group's committed position (where it has one).
    pub committed: BTreeMap<i32, i64>,
    /// The id of the topic's incarnation, where the broker tells it.
    pub topic_id: Option<String>,
}

pub struct TopicGuard {
    pub offsets: OffsetReader,
    pub client: Elasticsearch,
    pub alias: String,
    pub topic: String,
}

impl TopicGuard {
    /// Compares the topic with what the index was built from. `Ok(Err(..))` is a
    /// mismatch; `Err` means the check itself could not run.
    pub async fn check(&self) -> anyhow::Result<Result<(), Mismatch>> {
        let indexed = highest_versions(&self.client, &self.alias).await?;
        let built_from = index_admin::binding(&self.client, &self.alias).await?;
        let ends = self.offsets.end_offsets(&self.topic).await?;
        let committed = self
            .offsets
            .committed(&self.topic, ends.keys().copied())
            .await?;
        let topic_id = self.offsets.topic_id(&self.topic).await?;
        let now = TopicNow {
            ends,
            committed,
            topic_id,
        };
        Ok(judge(&self.topic, &indexed, &built_from, &now))
    }
}

/// The comparison itself: the topic must have the partitions the index was built
/// from, every partition the index knows must end past its version, and none may
/// end before the group's committed position.
pub fn judge(
    topic: &str,
    indexed: &BTreeMap<i32, i64>,
    built_from: &TopicBinding,
    now: &TopicNow,
) -> Result<(), Mismatch> {
    if let (Some(built_from), Some(now)) = (&built_from.topic_id, &now.topic_id)
        && built_from != now
    {
        return Err(Mismatch::TopicIdChanged {
            topic: topic.to_owned(),
            built_from: built_from.clone(),
            now: now.clone(),
        });
    }
    let partitions = now.ends.len() as i32;
    if let Some(built_from) = built_from.partitions
        && built_from != partitions
    {
        return Err(Mismatch::PartitionsChanged {
            topic: topic.to_owned(),
            built_from,
            now: partitions,
        });
    }
    for (&partition, &indexed_version) in indexed {
        // A partition that no longer exists ends, in effect, at 0.
        let end_offset = now.ends.get(&partition).copied().unwrap_or(0);
        if end_offset <= indexed_version {
            return Err(Mismatch::EndBelowVersion {
                topic: topic.to_owned(),
                partition,
                end_offset,
                indexed_version,
            });
        }
    }
    for (&partition, &committed) in &now.committed {
        let end_offset = now.ends.get(&partition).copied().unwrap_or(0);
        if committed > end_offset {
            return Err(Mismatch::CommittedPastEnd {
                topic: topic.to_owned(),
                partition,
                committed,
                end_offset,
            });
        }
    }
    Ok(())
}

/// Highest document version per partition, from one aggregation.
async fn highest_versions(
    client: &Elasticsearch,
    alias: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let response = client
        .search(SearchParts::Index(&[alias]))
        .body(json!({
            "size": 0,
            "aggs": {"partitions": {
                "terms": {"field": "partition", "size": MAX_PARTITIONS},
                "aggs": {"highest": {"max": {"field": "version"}}}
            }}
        }))
        .send()
        .await?
        .error_for_status_code()
        .context("querying the highest indexed versions")?;
    let body: Value = response.json().await?;
    let mut versions = BTreeMap::new();
    for bucket in body["aggregations"]["partitions"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let (Some(partition), Some(version)) =
            (bucket["key"].as_i64(), bucket["highest"]["value"].as_f64())
        {
            versions.insert(partition as i32, version as i64);
        }
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic_now(ends: &[(i32, i64)], committed: &[(i32, i64)]) -> TopicNow {
        TopicNow {
            ends: ends.iter().copied().collect(),
            committed: committed.iter().copied().collect(),
            topic_id: None,
        }
    }

    fn built_from(partitions: Option<i32>, topic_id: Option<&str>) -> TopicBinding {
        TopicBinding {
            partitions,
            topic_id: topic_id.map(str::to_owned),
        }
    }

    #[test]
    fn another_topic_id_is_another_incarnation() {
        let mut now = topic_now(&[(0, 500)], &[]);
        now.topic_id = Some("new-id".into());
        let indexed = BTreeMap::from([(0, 41)]);
        assert!(matches!(
            judge("t", &indexed, &built_from(Some(1), Some("old-id")), &now),
            Err(Mismatch::TopicIdChanged { .. })
        ));
        assert_eq!(
            judge("t", &indexed, &built_from(Some(1), Some("new-id")), &now),
            Ok(())
        );
        assert_eq!(
            judge("t", &indexed, &built_from(Some(1), None), &now),
            Ok(()),
            "an index from before ids were recorded"
        );
    }

    #[test]
    fn a_committed_position_past_the_end_is_a_recreated_topic() {
        let now = topic_now(&[(0, 5), (1, 100)], &[(0, 40), (1, 90)]);
        let mismatch = judge("t", &BTreeMap::new(), &built_from(None, None), &now).unwrap_err();
        assert_eq!(
            mismatch,
            Mismatch::CommittedPastEnd {
                topic: "t".into(),
                partition: 0,
                committed: 40,
                end_offset: 5
            }
        );
    }

    #[test]
    fn a_partition_count_other_than_the_index_was_built_from_is_refused() {
        let now = topic_now(&[(0, 5), (1, 5), (2, 5)], &[]);
        assert_eq!(
            judge("t", &BTreeMap::new(), &built_from(Some(2), None), &now),
            Err(Mismatch::PartitionsChanged {
                topic: "t".into(),
                built_from: 2,
                now: 3
            })
        );
        assert_eq!(
            judge("t", &BTreeMap::new(), &built_from(Some(3), None), &now),
            Ok(())
        );
        assert_eq!(
            judge("t", &BTreeMap::new(), &built_from(None, None), &now),
            Ok(()),
            "an index from before partitions were recorded"
        );
    }

    #[test]
    fn an_end_past_every_version_is_the_same_topic() {
        let indexed = BTreeMap::from([(0, 41), (1, 9)]);
        let now = topic_now(&[(0, 42), (1, 100), (2, 0)], &[(0, 42)]);
        assert_eq!(
            judge("t", &indexed, &built_from(Some(3), None), &now),
            Ok(())
        );
    }

    #[test]
    fn an_end_at_or_below_a_version_is_a_recreated_topic() {
        let indexed = BTreeMap::from([(0, 41), (1, 9)]);
        let now = topic_now(&[(0, 42), (1, 9)], &[]);
        assert_eq!(
            judge("t", &indexed, &built_from(None, None), &now),
            Err(Mismatch::EndBelowVersion {
                topic: "t".into(),
                partition: 1,
                end_offset: 9,
                indexed_version: 9
            })
        );

        let fewer_partitions = topic_now(&[(0, 42)], &[]);
        assert!(matches!(
            judge("t", &indexed, &built_from(None, None), &fewer_partitions),
            Err(Mismatch::EndBelowVersion { partition: 1, .. })
        ));
    }
}
