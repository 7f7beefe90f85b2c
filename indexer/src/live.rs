//! The live indexer: the fetch-and-write loop on the consumer group, held while the
//! recreated-topic guard cannot vouch for the topic, consumption paused while the
//! engine refuses writes, offsets stored as batches finish and committed at the end.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use tokio::sync::watch;

use crate::batch::BatchLimits;
use crate::batch_writer::BatchWriter;
use crate::bulk::BulkWriter;
use crate::consumer::GroupConsumer;
use crate::dead_letter::DeadLetters;
use crate::fetch::Flow;
use crate::guard::TopicGuard;
use crate::health::Health;
use crate::metrics::{GuardState, Metrics};
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
        let (flow, flow_now) = watch::channel(Flow::Held);
        let (guard_state, guard_now) = watch::channel(GuardState::Unknown);
        let pipeline = Pipeline::new(
            &self.consumer,
            &self.writer,
            self.limits,
            self.metrics.messages_waiting.clone(),
        );
        let consumer = &self.consumer;
        let mut plan = UntilStopped;
        let indexing = pipeline.run(&mut plan, &flow_now, signals.stop.clone(), |batch| {
            offsets::store(consumer.as_ref(), &batch.consumed)
        });
        let outcome = tokio::select! {
            outcome = indexing => outcome,
            never = self.follow_dependencies(guard_now, &flow) => match never {},
            never = self.run_guard(&guard_state) => match never {},
        };
        offsets::commit_stored(self.consumer.clone()).await;
        match outcome {
            Ok(_) | Err(LoopError::Write(Interrupted::Aborted)) => Ok(()),
            Err(LoopError::Write(error)) => Err(error.into()),
            Err(LoopError::Fetch(error)) => Err(error),
        }
    }

    /// Readiness, the flow of batches and the consumer's pause follow the engine,
    /// the dead-letter topic, the topic guard and the group: while the engine
    /// refuses writes consumption pauses, so memory stays bounded by what was
    /// already fetched; while the guard cannot vouch for the topic nothing is
    /// written.
    async fn follow_dependencies(
        &self,
        mut guard: watch::Receiver<GuardState>,
        flow: &watch::Sender<Flow>,
    ) -> std::convert::Infallible {
        let mut engine = self.writer.engine_writable();
        let mut dead_letters = self.writer.poison_sink().writable();
        let mut joined = self.consumer.context().joined();
        loop {
            let engine_writable = *engine.borrow_and_update();
            let dead_letters_writable = *dead_letters.borrow_and_update();
            let guard_state = *guard.borrow_and_update();
            self.health.engine_writable(engine_writable);
            self.health.dead_letters_writable(dead_letters_writable);
            self.metrics
                .dead_letters_writable
                .set(i64::from(dead_letters_writable));
            self.health
                .topic_matches(guard_state == GuardState::Matches);
            self.health.joined_group(*joined.borrow_and_update());
            let next = if guard_state != GuardState::Matches {
                Flow::Held
            } else if !engine_writable {
                Flow::Paused
            } else {
                Flow::Flowing
            };
            // The consumer starts paused, as the flow starts held; it reaches
            // librdkafka only when it changes.
            self.consumer
                .context()
                .set_paused(self.consumer.as_ref(), next != Flow::Flowing);
            flow.send_if_modified(|now| std::mem::replace(now, next) != next);
            // A sender gone can change nothing any more; the others still can.
            tokio::select! {
                Ok(()) = engine.changed() => {}
                Ok(()) = dead_letters.changed() => {}
                Ok(()) = guard.changed() => {}
                Ok(()) = joined.changed() => {}
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Runs the recreated-topic guard for good: every `GUARD_INTERVAL` while the
    /// topic matches or is refused, every `GUARD_RETRY` while it cannot tell.
    async fn run_guard(&self, state: &watch::Sender<GuardState>) -> std::convert::Infallible {
        loop {
            let (now, verdict, wait) = match self.guard.check().await {
                Ok(Ok(())) => {
                    self.metrics.topic_recreated.set(0);
                    (GuardState::Matches, None, GUARD_INTERVAL)
                }
                Ok(Err(mismatch)) => {
                    tracing::error!(error = %mismatch, "refusing to write");
                    self.metrics.topic_recreated.set(1);
                    (
                        GuardState::Refusing,
                        Some(mismatch.to_string()),
                        GUARD_INTERVAL,
                    )
                }
                // Metadata answers errors for a moment after a topic is created, so
                // look again soon.
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "recreated-topic check failed, retrying"
                    );
                    (GuardState::Unknown, Some(format!("{error:#}")), GUARD_RETRY)
                }
            };
            self.metrics.guard(now);
            self.metrics.status.guard(match verdict {
                Some(why) => format!("{}: {why}", now.as_str()),
                None => now.as_str().to_owned(),
            });
            state.send_if_modified(|was| std::mem::replace(was, now) != now);
            tokio::time::sleep(wait).await;
        }
    }
}

/// The live indexer's plan: fetch until told to stop.
struct UntilStopped;

impl FetchPlan for UntilStopped {
    async fn before_batch(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<Next> {
        Ok(if *stop.borrow() {
            Next::Stopped
        } else {
            Next::Gather
        })
    }
}
