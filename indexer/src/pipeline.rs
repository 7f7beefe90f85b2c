//! The stages joined: consume → decode → batch → coalesce → bulk write → classify →
//! dead-letter → store offsets. Offsets are stored in batch order, so a stored
//! offset never outruns the work below it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use tokio::sync::watch;

use crate::batch::{Batch, BatchLimits};
use crate::consume::{Gatherer, GroupConsumer, handover};
use crate::dead_letter::DeadLetters;
use crate::decode::DeadLetterReason;
use crate::guard::TopicGuard;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::process::{Host, Interrupted, Processor};

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
    pub abort: watch::Receiver<bool>,
}

pub struct Pipeline {
    pub consumer: Arc<GroupConsumer>,
    pub processor: Processor,
    pub dead_letters: DeadLetters,
    pub guard: TopicGuard,
    pub limits: BatchLimits,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Whether consumption is paused (the engine refuses writes).
    pub paused: watch::Sender<bool>,
}

/// The live indexer's side of a batch in progress: dead-letters poison, pauses
/// consumption while the engine fails, and gives up only when the grace period
/// after SIGTERM is over.
struct LiveBatch<'a> {
    pipeline: &'a Pipeline,
    abort: watch::Receiver<bool>,
}

impl Pipeline {
    /// Runs until `signals.stop` turns true: the batch in flight is finished, stored
    /// offsets are committed, and it returns.
    pub async fn run(&self, signals: Signals) -> anyhow::Result<()> {
        let host = LiveBatch {
            pipeline: self,
            abort: signals.abort.clone(),
        };
        // The next batch is gathered while one is written, and grows until the
        // writer asks for it.
        let (writer, mut batches) = handover();
        let mut stop = signals.stop.clone();
        let fetch = async move {
            let gatherer = Gatherer {
                consumer: &self.consumer,
                codec: &self.processor.codec,
                limits: &self.limits,
            };
            let paused = self.paused.subscribe();
            let mut carried = Vec::new();
            let mut next_guard_check = Instant::now();
            loop {
                if Instant::now() >= next_guard_check {
                    if !self.wait_until_topic_matches(&mut stop).await {
                        return;
                    }
                    next_guard_check = Instant::now() + GUARD_INTERVAL;
                }
                let Some(mut batch) = gatherer.gather(&mut carried, &mut stop).await else {
                    return;
                };
                if !gatherer
                    .grow_until_wanted(&mut batch, &mut carried, &writer, &paused, &mut stop)
                    .await
                    || !writer.send(batch).await
                {
                    return;
                }
            }
        };
        let process = self
            .processor
            .write_batches(&host, &mut batches, |batch| self.store_offsets(batch));
        tokio::pin!(fetch, process);
        // When fetching ends (stop), the batches already gathered are still written;
        // when writing ends first (an error), fetching is dropped with it.
        let outcome = tokio::select! {
            result = &mut process => result,
            () = &mut fetch => process.await,
        };
        self.commit();
        match outcome {
            Ok(()) | Err(Interrupted::Aborted) => Ok(()),
            Err(error @ Interrupted::RetriesExhausted(_)) => Err(error.into()),
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

    fn set_paused(&self, paused: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(error) => {
                tracing::warn!(%error, "reading the assignment failed");
                return;
            }
        };
        let result = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => {
                self.paused.send_replace(paused);
                tracing::info!(
                    paused,
                    partitions = assignment.count(),
                    "consumption paused state changed"
                );
            }
            Err(error) => tracing::warn!(%error, paused, "pausing or resuming consumption failed"),
        }
    }

    fn store_offsets(&self, batch: &Batch) {
        // Fails only for partitions revoked meanwhile; their new owner re-reads
        // them, and versions make that harmless.
        if let Err(error) = self.consumer.store_offsets(&batch.next_offsets()) {
            tracing::warn!(%error, "storing offsets failed");
        }
    }

    fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            // Nothing stored since the last commit is reported as an error too.
            Err(error) => tracing::info!(%error, "final commit"),
        }
    }
}

impl Host for LiveBatch<'_> {
    /// Readiness follows the engine, and consumption pauses while it fails, so
    /// memory stays bounded by what was already fetched.
    fn engine_writable(&self, writable: bool) {
        self.pipeline.health.engine_writable(writable);
        self.pipeline.set_paused(!writable);
    }

    fn abort_signal(&self) -> &watch::Receiver<bool> {
        &self.abort
    }

    /// Dead-letters one message, retrying until Kafka acknowledges: a poison message
    /// must never be skipped unrecorded.
    async fn poison(
        &self,
        message: &OwnedMessage,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<(), Interrupted> {
        let dead_letters = &self.pipeline.dead_letters;
        tracing::warn!(
            reason = reason.as_str(),
            %error,
            partition = message.partition(),
            offset = message.offset(),
            dlq = dead_letters.topic(),
            "dead-lettering message"
        );
        let mut delays = self.pipeline.processor.retry.delays();
        loop {
            match dead_letters.send(message, reason, error).await {
                Ok(()) => {
                    self.pipeline.metrics.dead_lettered(reason.as_str());
                    return Ok(());
                }
                Err(send_error) => {
                    let Some(delay) = delays.next() else {
                        return Err(Interrupted::RetriesExhausted(send_error.to_string()));
                    };
                    tracing::warn!(error = %send_error, retry_in = ?delay, "dead-letter write failed, retrying");
                    self.wait_before_retry(delay).await?;
                }
            }
        }
    }
}
