//! The fault schedule: drawn from the seed alone, so a seed names one run's faults
//! (kinds, targets, times and lengths) and a failed run can be played again.

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One fault, with its target and how long it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// kill -9 one of the indexers, restart it after `down_ms`.
    KillIndexer { indexer: usize, down_ms: u64 },
    /// Start one more indexer (a rebalance), stop it with SIGTERM after `for_ms`
    /// (another rebalance).
    AddIndexer { for_ms: u64 },
    /// SIGSTOP an engine node (1-based), SIGCONT after `for_ms`.
    StopEngine { node: usize, for_ms: u64 },
    /// kill -9 a broker (1-based), restart it after `down_ms`.
    KillBroker { broker: usize, down_ms: u64 },
    /// Cut the path from one indexer to the engine (its fault proxy) for `for_ms`.
    CutEngine { indexer: usize, for_ms: u64 },
    /// Produce poison straight to the topic: `decode` messages that are not Avro,
    /// `schema` messages written with a schema the indexers do not know yet.
    Poison { decode: usize, schema: usize },
    /// `indexer replay` into a new index while the load goes on.
    Replay,
    /// Once every `schema` poison is dead-lettered: teach the indexers the schema
    /// (a rolling restart), then `indexer dlq redrive`.
    FixAndRedrive,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillIndexer { indexer, down_ms } => {
                write!(f, "kill -9 indexer {indexer}, restart after {down_ms} ms")
            }
            Fault::AddIndexer { for_ms } => {
                write!(f, "add an indexer, remove it after {for_ms} ms")
            }
            Fault::StopEngine { node, for_ms } => {
                write!(f, "SIGSTOP engine node {node} for {for_ms} ms")
            }
            Fault::KillBroker { broker, down_ms } => {
                write!(f, "kill -9 broker {broker}, restart after {down_ms} ms")
            }
            Fault::CutEngine { indexer, for_ms } => {
                write!(
                    f,
                    "cut indexer {indexer}'s path to the engine for {for_ms} ms"
                )
            }
            Fault::Poison { decode, schema } => {
                write!(
                    f,
                    "inject {decode} decode and {schema} schema poison messages"
                )
            }
            Fault::Replay => write!(f, "indexer replay"),
            Fault::FixAndRedrive => {
                write!(
                    f,
                    "teach the indexers schema v2 (rolling restart), then dlq redrive"
                )
            }
        }
    }
}

impl Fault {
    /// How long the fault holds its node down, stopped or cut.
    pub fn length_ms(&self) -> u64 {
        match self {
            Fault::KillIndexer { down_ms, .. } | Fault::KillBroker { down_ms, .. } => *down_ms,
            Fault::AddIndexer { for_ms }
            | Fault::StopEngine { for_ms, .. }
            | Fault::CutEngine { for_ms, .. } => *for_ms,
            Fault::Poison { .. } | Fault::Replay | Fault::FixAndRedrive => 0,
        }
    }

    /// The one process or path the fault acts on, if it aims at one.
    pub fn node(&self) -> Option<Node> {
        match self {
            Fault::KillIndexer { indexer, .. } => Some(Node::Indexer(*indexer)),
            Fault::CutEngine { indexer, .. } => Some(Node::PathToEngine(*indexer)),
            Fault::KillBroker { broker, .. } => Some(Node::Broker(*broker)),
            Fault::StopEngine { node, .. } => Some(Node::Engine(*node)),
            Fault::AddIndexer { .. }
            | Fault::Poison { .. }
            | Fault::Replay
            | Fault::FixAndRedrive => None,
        }
    }
}

/// What a fault aims at. Faults on different nodes overlap freely; two on one node
/// must not, or the second acts on the first's half-done work: a kill -9 of the
/// broker the first fault is restarting fails that restart, and the first SIGCONT
/// ends the second SIGSTOP early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Indexer(usize),
    /// An indexer's fault proxy to the engine.
    PathToEngine(usize),
    Broker(usize),
    Engine(usize),
}

impl Node {
    /// How long after a fault's length the node is left alone, so that it is back
    /// before the next fault on it: a restarted broker took about 10 s to start
    /// under the soak's load here, an indexer a few seconds; both get several times
    /// that. A SIGCONT engine node is back at once but rejoins its cluster.
    pub fn settle_ms(self) -> u64 {
        match self {
            Node::Broker(_) => 60_000,
            Node::Indexer(_) => 30_000,
            Node::Engine(_) => 10_000,
            Node::PathToEngine(_) => 0,
        }
    }
}

/// A fault and when it starts, from the start of the load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub at_ms: u64,
    pub fault: Fault,
}

/// What the schedule may aim at.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub indexers: usize,
    pub brokers: usize,
    pub engine_nodes: usize,
}

/// The random faults, one of each first so that even a short run meets every kind.
const RANDOM_KINDS: usize = 5;
/// One more random fault per this much load beyond the first of each kind.
const SECONDS_PER_EXTRA_FAULT: u64 = 40;

/// How many start times are drawn for a fault before it is left out.
const DRAWS_FOR_A_FREE_NODE: usize = 100;

/// Whether `fault` starting at `at_ms` leaves every planned fault on its node alone:
/// each holds the node from its start through its length and the node's settling.
fn node_is_free(plan: &[Planned], fault: &Fault, at_ms: u64) -> bool {
    let Some(node) = fault.node() else {
        return true;
    };
    let until = |at_ms: u64, fault: &Fault| at_ms + fault.length_ms() + node.settle_ms();
    plan.iter()
        .filter(|p| p.fault.node() == Some(node))
        .all(|p| until(at_ms, fault) <= p.at_ms || at_ms >= until(p.at_ms, &p.fault))
}

/// The schedule of a run of `duration` for `seed`, sorted by start time. Every fault
/// ends by 85% of the run, so the load goes on a while over the healed system.
pub fn plan(seed: u64, duration: Duration, targets: Targets) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let total = duration.as_millis() as u64;
    let at = |rng: &mut ChaCha8Rng, from: f64, to: f64| {
        rng.random_range((total as f64 * from) as u64..=(total as f64 * to) as u64)
    };
    let mut plan = Vec::new();
    // Poison before the fix only: after it, `schema` poison is no poison any more.
    for _ in 0..2 {
        let at_ms = at(&mut rng, 0.05, 0.40);
        let fault = Fault::Poison {
            decode: rng.random_range(1..=5),
            schema: rng.random_range(1..=5),
        };
        plan.push(Planned { at_ms, fault });
    }
    plan.push(Planned {
        at_ms: at(&mut rng, 0.30, 0.50),
        fault: Fault::Replay,
    });
    plan.push(Planned {
        at_ms: at(&mut rng, 0.55, 0.65),
        fault: Fault::FixAndRedrive,
    });
    let extra = (total / 1000).saturating_sub(180) / SECONDS_PER_EXTRA_FAULT;
    for i in 0..RANDOM_KINDS + extra as usize {
        let kind = if i < RANDOM_KINDS {
            i
        } else {
            rng.random_range(0..RANDOM_KINDS)
        };
        let fault = match kind {
            0 => Fault::KillIndexer {
                indexer: rng.random_range(0..targets.indexers),
                down_ms: rng.random_range(2_000..=10_000),
            },
            1 => Fault::AddIndexer {
                for_ms: rng.random_range(10_000..=40_000),
            },
            2 => Fault::StopEngine {
                node: rng.random_range(1..=targets.engine_nodes),
                for_ms: rng.random_range(20_000..=60_000),
            },
            3 => Fault::KillBroker {
                broker: rng.random_range(1..=targets.brokers),
                down_ms: rng.random_range(5_000..=30_000),
            },
            _ => Fault::CutEngine {
                indexer: rng.random_range(0..targets.indexers),
                for_ms: rng.random_range(5_000..=20_000),
            },
        };
        let latest = (total * 85 / 100)
            .saturating_sub(fault.length_ms())
            .max(total / 20);
        // A time when the fault's node is free, drawn again while it is not; a fault
        // that finds none is left out (a run this crowded has plenty of others).
        let Some(at_ms) = (0..DRAWS_FOR_A_FREE_NODE)
            .map(|_| rng.random_range(total / 20..=latest))
            .find(|&at_ms| node_is_free(&plan, &fault, at_ms))
        else {
            continue;
        };
        plan.push(Planned { at_ms, fault });
    }
    plan.sort_by_key(|p| p.at_ms);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGETS: Targets = Targets {
        indexers: 3,
        brokers: 3,
        engine_nodes: 2,
    };

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let three_minutes = Duration::from_secs(180);
        assert_eq!(
            plan(7, three_minutes, TARGETS),
            plan(7, three_minutes, TARGETS)
        );
        assert_ne!(
            plan(7, three_minutes, TARGETS),
            plan(8, three_minutes, TARGETS)
        );
    }

    #[test]
    fn every_kind_of_fault_is_planned_and_ends_before_the_load_does() {
        for seed in 0..50 {
            let duration = Duration::from_secs(180);
            let plan = plan(seed, duration, TARGETS);
            for kind in [
                "kill_indexer",
                "add_indexer",
                "stop_engine",
                "kill_broker",
                "cut_engine",
                "poison",
                "replay",
                "fix_and_redrive",
            ] {
                assert!(
                    plan.iter()
                        .any(|p| serde_json::to_value(&p.fault).is_ok_and(|v| v["kind"] == kind)),
                    "seed {seed}: no {kind} in {plan:?}"
                );
            }
            let fix = plan
                .iter()
                .find(|p| p.fault == Fault::FixAndRedrive)
                .map(|p| p.at_ms);
            for p in &plan {
                if let Fault::Poison { .. } = p.fault {
                    assert!(Some(p.at_ms) < fix, "seed {seed}: poison after the fix");
                }
                if let Fault::StopEngine { for_ms, .. } = p.fault {
                    assert!(p.at_ms + for_ms <= 180_000 * 85 / 100, "seed {seed}");
                }
            }
        }
    }

    /// Seed 4104 of a 20-minute soak once drew `kill -9 broker 2` at 517.8 s (down
    /// 10.9 s) and again at 534.0 s: the second kill hit the broker the first fault
    /// was restarting, and that restart failed the run.
    #[test]
    fn no_two_faults_on_one_node_overlap_nor_follow_within_its_restart() {
        let twenty_minutes = Duration::from_secs(1200);
        let seeds = (0..200).chain([4101, 4102, 4103, 4104, 1796460613]);
        for seed in seeds {
            for duration in [Duration::from_secs(180), twenty_minutes] {
                let plan = plan(seed, duration, TARGETS);
                for (i, a) in plan.iter().enumerate() {
                    for b in &plan[i + 1..] {
                        let (Some(node), Some(other)) = (a.fault.node(), b.fault.node()) else {
                            continue;
                        };
                        if node != other {
                            continue;
                        }
                        let busy_until = a.at_ms + a.fault.length_ms() + node.settle_ms();
                        assert!(
                            b.at_ms >= busy_until,
                            "seed {seed}, {duration:?}: {} at {} ms hits {node:?} \
                             before {} ms, when the fault at {} ms ({}) is over",
                            b.fault,
                            b.at_ms,
                            busy_until,
                            a.at_ms,
                            a.fault,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_longer_run_meets_more_faults() {
        let short = plan(1, Duration::from_secs(180), TARGETS).len();
        let long = plan(1, Duration::from_secs(1200), TARGETS).len();
        assert!(long >= short + 20, "{short} vs {long}");
    }
}
