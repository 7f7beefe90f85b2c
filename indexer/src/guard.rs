//! The recreated-topic guard. An index is bound to one incarnation of its topic: a
//! deleted and recreated topic restarts its offsets at 0, and since offsets are the
//! documents' versions, every new write would be silently refused as stale. The
//! guard compares each partition's end offset with the highest version the index
//! holds for it; an end at or below that version means the topic is not the one
//! the index was built from.

use std::collections::BTreeMap;

use anyhow::Context;
use elasticsearch::{Elasticsearch, SearchParts};
use serde_json::{Value, json};

use crate::offsets::OffsetReader;

/// The most partitions the version query reports on; far above any real topic.
const MAX_PARTITIONS: u32 = 10_000;

/// Why the indexer refuses to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "topic {topic} partition {partition} ends at offset {end_offset} but the index already holds version {indexed_version}: \
     the topic was deleted and recreated, so every write would be ignored as stale; \
     rebuild into a new index from the new topic (indexer replay)"
)]
pub struct TopicRecreated {
    pub topic: String,
    pub partition: i32,
    pub end_offset: i64,
    pub indexed_version: i64,
}

pub struct TopicGuard {
    pub offsets: OffsetReader,
    pub client: Elasticsearch,
    pub alias: String,
    pub topic: String,
}

impl TopicGuard {
    /// Compares the topic's end offsets with the versions in the index. `Ok(Err(..))`
    /// is a mismatch; `Err` means the check itself could not run.
    pub async fn check(&self) -> anyhow::Result<Result<(), TopicRecreated>> {
        let indexed = highest_versions(&self.client, &self.alias).await?;
        if indexed.is_empty() {
            return Ok(Ok(()));
        }
        let ends = self.offsets.end_offsets(&self.topic).await?;
        Ok(compare(&self.topic, &indexed, &ends))
    }
}

/// The comparison itself: a partition the index knows must end past its version.
pub fn compare(
    topic: &str,
    indexed: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
) -> Result<(), TopicRecreated> {
    for (&partition, &indexed_version) in indexed {
        // A partition that no longer exists ends, in effect, at 0.
        let end_offset = ends.get(&partition).copied().unwrap_or(0);
        if end_offset <= indexed_version {
            return Err(TopicRecreated {
                topic: topic.to_owned(),
                partition,
                end_offset,
                indexed_version,
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

    #[test]
    fn an_end_past_every_version_is_the_same_topic() {
        let indexed = BTreeMap::from([(0, 41), (1, 9)]);
        let ends = BTreeMap::from([(0, 42), (1, 100), (2, 0)]);
        assert_eq!(compare("t", &indexed, &ends), Ok(()));
    }

    #[test]
    fn an_end_at_or_below_a_version_is_a_recreated_topic() {
        let indexed = BTreeMap::from([(0, 41), (1, 9)]);
        let ends = BTreeMap::from([(0, 42), (1, 9)]);
        let mismatch = compare("t", &indexed, &ends).unwrap_err();
        assert_eq!(
            (
                mismatch.partition,
                mismatch.end_offset,
                mismatch.indexed_version
            ),
            (1, 9, 9)
        );

        let fewer_partitions = BTreeMap::from([(0, 42)]);
        assert_eq!(
            compare("t", &indexed, &fewer_partitions)
                .unwrap_err()
                .partition,
            1
        );
    }
}
