//! The live indexer: the fetch-and-write loop on the consumer group, with the
//! recreated-topic guard before batches, consumption paused while the engine
//! refuses writes, offsets stored as batches finish and committed at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tokio::sync::watch;

use crate::batch::BatchLimits;
use crate::batch_writer::BatchWriter;
use crate::bulk::BulkWriter;
use crate::consumer::GroupConsumer;
use crate::dead_letter::DeadLetters;
use crate::guard::TopicGuard;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::offsets;
use crate::pipeline::{FetchPlan, LoopError, Next, Pipeline};
use crate::retry::Interrupted;

/// How often the recreated-topic guard runs between batches (and while it refuses).
const GUARD_INTERVAL: Duration = Duration::from_secs(30);

/// How soon the guard looks again when it could not tell.
const GUARD_RETRY: Duration = Duration::from_secs(1);

/// The two steps of a graceful stop.
#[derive(Clone)]
pub struct Signals {
    /// Stop fetching; finish the batch in flight.
    pub stop: watch::Receiver<bool>,
    /// The grace period is over: abandon the batch in flight (it stays uncommitted).
    /// The writer's retries end at this signal too.
    pub abort: watch::Receiver<bool>,
}

pub(crate) struct LiveIndexer {
    pub consumer: Arc<GroupConsumer>,
    pub writer: BatchWriter<BulkWriter, DeadLetters>,
    pub guard: TopicGuard,
    pub limits: BatchLimits,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

impl LiveIndexer {
    /// Runs until `signals.stop` turns true: the batches in flight are finished,
    /// stored offsets are committed, and it returns.
    pub async fn run(&self, signals: Signals) -> anyhow::Result<()> {
        let (paused, paused_now) = watch::channel(false);
        let mut plan = GuardSchedule {
            indexer: self,
            next_check: Instant::now(),
        };
        let pipeline = Pipeline::new(&self.consumer, &self.writer, self.limits);
        let consumer = &self.consumer;
        let indexing = pipeline.run(&mut plan, &paused_now, signals.stop.clone(), |batch| {
            offsets::store(consumer.as_ref(), &batch.consumed)
        });
        let outcome = tokio::select! {
            outcome = indexing => outcome,
            never = self.follow_engine(&paused) => match never {},
            never = self.follow_dead_letters() => match never {},
        };
        offsets::commit_stored(self.consumer.clone()).await;
        match outcome {
            Ok(_) | Err(LoopError::Write(Interrupted::Aborted)) => Ok(()),
            Err(LoopError::Write(error)) => Err(error.into()),
            Err(LoopError::Fetch(error)) => Err(error),
        }
    }

    /// Readiness follows the engine, and consumption pauses while it refuses
    /// writes, so memory stays bounded by what was already fetched.
    async fn follow_engine(&self, paused: &watch::Sender<bool>) -> std::convert::Infallible {
        let mut writable = self.writer.engine_writable();
        loop {
            let now = *writable.borrow_and_update();
            self.health.engine_writable(now);
            self.set_paused(paused, !now);
            if writable.changed().await.is_err() {
                // The writer is gone, and with it any change.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Readiness follows the dead-letter topic too: while poison cannot be
    /// recorded, nothing behind it is committed.
    async fn follow_dead_letters(&self) -> std::convert::Infallible {
        let mut writable = self.writer.poison_sink().writable();
        loop {
            let now = *writable.borrow_and_update();
            self.health.dead_letters_writable(now);
            self.metrics.dead_letters_writable.set(i64::from(now));
            if writable.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn set_paused(&self, paused: &watch::Sender<bool>, pause: bool) {
        if *paused.borrow() == pause {
            return;
        }
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::warn!(%error, "reading the assignment failed");
                return;
            }
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                paused.send_replace(pause);
                tracing::info!(
                    paused = pause,
                    partitions = assignment.count(),
                    "consumption paused state changed"
                );
            }
            Err(error) => {
                tracing::warn!(%error, paused = pause, "pausing or resuming consumption failed")
            }
        }
    }

    /// Runs the recreated-topic guard; while it finds a mismatch, refuses to write
    /// (not ready, metric set) and checks again later. `false` once told to stop.
    async fn wait_until_topic_matches(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.guard.check().await {
                Ok(Ok(())) => {
                    self.metrics.topic_recreated.set(0);
                    self.health.topic_matches(true);
                    return true;
                }
                Ok(Err(mismatch)) => {
                    tracing::error!(error = %mismatch, "refusing to write");
                    self.metrics.topic_recreated.set(1);
                    self.health.topic_matches(false);
                }
                // Not knowing is not a pass: consuming now could send every write of a
                // recreated topic into the index unseen. Metadata answers errors for a
                // moment after a topic is created, so look again soon.
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "recreated-topic check failed, retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(GUARD_RETRY) => continue,
                        _ = stop.changed() => return false,
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(GUARD_INTERVAL) => {}
                _ = stop.changed() => return false,
            }
        }
    }
}

/// The live indexer's plan: fetch until told to stop, with the guard's check
/// before a batch whenever it is due.
struct GuardSchedule<'a> {
    indexer: &'a LiveIndexer,
    next_check: Instant,
}

impl FetchPlan for GuardSchedule<'_> {
    async fn before_batch(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<Next> {
        if Instant::now() >= self.next_check {
            if !self.indexer.wait_until_topic_matches(stop).await {
                return Ok(Next::Stopped);
            }
            self.next_check = Instant::now() + GUARD_INTERVAL;
        }
        Ok(Next::Gather)
    }
}
