//! Telling a slow drain from a stopped one, so that a drain that stops fails the bench
//! at once and says where, rather than waiting out its hour (a CI run once hung on
//! a partition the indexer had been assigned but never read).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a drain may show no progress before the bench calls it stalled: far
/// above any pause of a working indexer (a batch's retries back off 30 s at most)
/// or of pull ingestion.
pub const STALLED: Duration = Duration::from_secs(120);

/// The last state seen of something that should keep moving, and since when.
pub struct Watch<S> {
    state: S,
    moved_at: Instant,
}

impl<S: PartialEq> Watch<S> {
    pub fn new(state: S, now: Instant) -> Self {
        Self {
            state,
            moved_at: now,
        }
    }

    /// Records `state` as seen at `now`. Once it has stood still for `STALLED`,
    /// returns for how long.
    pub fn stalled(&mut self, state: S, now: Instant) -> Option<Duration> {
        if state != self.state {
            self.state = state;
            self.moved_at = now;
        }
        let still = now.duration_since(self.moved_at);
        (still >= STALLED).then_some(still)
    }
}

/// A consumer group's drain of a topic, by its committed offsets.
pub struct CommitProgress {
    ends: BTreeMap<i32, i64>,
    committed: Watch<BTreeMap<i32, i64>>,
}

impl CommitProgress {
    /// `ends`: each partition's end offset, which the drain has to commit.
    pub fn new(ends: BTreeMap<i32, i64>, now: Instant) -> Self {
        Self {
            ends,
            committed: Watch::new(BTreeMap::new(), now),
        }
    }

    /// Fails once nothing has been committed for `STALLED`, naming every partition
    /// short of its end.
    pub fn observe(&mut self, committed: BTreeMap<i32, i64>, now: Instant) -> anyhow::Result<()> {
        let Some(still) = self.committed.stalled(committed, now) else {
            return Ok(());
        };
        let committed = &self.committed.state;
        anyhow::bail!(
            "the indexer stopped draining: nothing committed for {still:?}; {}",
            self.ends
                .iter()
                .filter(|&(p, end)| committed.get(p) != Some(end))
                .map(|(p, end)| match committed.get(p) {
                    Some(at) => format!("partition {p} committed {at} of {end}"),
                    None => format!("partition {p} committed nothing of {end}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_that_stops_moving_fails_naming_the_partitions_behind() {
        let start = Instant::now();
        let ends = BTreeMap::from([(0, 40), (1, 40), (2, 44)]);
        let mut progress = CommitProgress::new(ends, start);
        let stuck = BTreeMap::from([(0, 40), (2, 44)]);
        progress
            .observe(BTreeMap::from([(0, 10)]), start + Duration::from_secs(1))
            .unwrap();
        // Moving again, however slowly, restarts the clock.
        progress
            .observe(stuck.clone(), start + Duration::from_secs(100))
            .unwrap();
        progress
            .observe(
                stuck.clone(),
                start + Duration::from_secs(100) + STALLED / 2,
            )
            .unwrap();
        let error = progress
            .observe(stuck, start + Duration::from_secs(100) + STALLED)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("partition 1 committed nothing of 40"),
            "{error}"
        );
        assert!(!error.contains("partition 0"), "{error}");
    }

    #[test]
    fn a_drain_that_never_starts_is_stalled_from_its_start() {
        let start = Instant::now();
        let mut progress = CommitProgress::new(BTreeMap::from([(0, 5)]), start);
        progress
            .observe(BTreeMap::new(), start + STALLED / 2)
            .unwrap();
        let error = progress
            .observe(BTreeMap::new(), start + STALLED)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("partition 0 committed nothing of 5"),
            "{error}"
        );
    }

    #[test]
    fn a_count_that_stops_growing_is_stalled_and_one_that_grows_is_not() {
        let start = Instant::now();
        let mut processed = Watch::new(0_u64, start);
        assert_eq!(processed.stalled(0, start + STALLED / 2), None);
        assert_eq!(processed.stalled(7, start + STALLED), None);
        assert_eq!(processed.stalled(7, start + STALLED + STALLED / 2), None);
        assert_eq!(
            processed.stalled(7, start + STALLED * 2 + Duration::from_secs(1)),
            Some(STALLED + Duration::from_secs(1))
        );
    }
}
