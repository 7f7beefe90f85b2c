//! The stages joined: consume → decode → batch → coalesce → bulk write → classify →
//! dead-letter → store offsets. One batch is in flight at a time, so offsets are
//! stored in order and a stored offset never outruns the work below it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use citypop_schemas::event::Codec;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use tokio::sync::watch;

use crate::batch::{Batch, BatchLimits};
use crate::bulk::{BulkWriter, ItemOutcome};
use crate::coalesce::newest_per_key;
use crate::commit::next_offsets;
use crate::consume::{GroupConsumer, next_batch};
use crate::dead_letter::DeadLetters;
use crate::decode::{DeadLetterReason, Decoded, Write, decode};
use crate::guard::TopicGuard;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;

/// How often the recreated-topic guard runs between batches (and while it refuses).
const GUARD_INTERVAL: Duration = Duration::from_secs(30);

/// The two steps of a graceful stop.
#[derive(Clone)]
pub struct Signals {
    /// Stop fetching; finish the batch in flight.
    pub stop: watch::Receiver<bool>,
    /// The grace period is over: abandon the batch in flight (it stays uncommitted).
    pub abort: watch::Receiver<bool>,
}

/// Why the pipeline stopped before finishing a batch.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("the shutdown grace period ended during retries; the batch is left uncommitted")]
    GraceElapsed,
    #[error("gave up after the configured retries: {0}")]
    RetriesExhausted(String),
}

pub struct Pipeline {
    pub consumer: Arc<GroupConsumer>,
    pub codec: Codec,
    pub bulk: BulkWriter,
    pub dead_letters: DeadLetters,
    pub guard: TopicGuard,
    pub limits: BatchLimits,
    pub retry: RetryPolicy,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Messages that arrived while a batch was being retried; they open the next one.
    pub carried: Mutex<Vec<OwnedMessage>>,
}

impl Pipeline {
    /// Runs until `signals.stop` turns true: the batch in flight is finished, stored
    /// offsets are committed, and it returns.
    pub async fn run(&self, signals: Signals) -> anyhow::Result<()> {
        let mut stop = signals.stop.clone();
        let mut next_guard_check = Instant::now();
        let outcome = loop {
            if Instant::now() >= next_guard_check {
                if !self.wait_until_topic_matches(&mut stop).await {
                    break Ok(());
                }
                next_guard_check = Instant::now() + GUARD_INTERVAL;
            }
            let carried = std::mem::take(&mut *self.lock_carried());
            let Some(batch) = next_batch(&self.consumer, &self.limits, carried, &mut stop).await
            else {
                break Ok(());
            };
            match self.handle(&batch, &signals.abort).await {
                Ok(()) => self.store_offsets(&batch),
                Err(Interrupted::GraceElapsed) => break Ok(()),
                Err(error @ Interrupted::RetriesExhausted(_)) => break Err(error.into()),
            }
        };
        self.commit();
        outcome
    }

    /// Runs the recreated-topic guard; while it finds a mismatch, refuses to write
    /// (not ready, metric set) and checks again later. `false` once told to stop.
    async fn wait_until_topic_matches(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.guard.check(&self.consumer).await {
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
                // The engine or Kafka being down is the retry loop's business; the
                // guard runs again at its next interval.
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "recreated-topic check failed");
                    return true;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(GUARD_INTERVAL) => {}
                _ = stop.changed() => return false,
            }
        }
    }

    async fn handle(
        &self,
        batch: &Batch,
        abort: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        self.metrics.consumed(batch.len());
        let mut writes = Vec::with_capacity(batch.len());
        for message in &batch.messages {
            match decode(&self.codec, message) {
                Decoded::Write(write) => writes.push(write),
                Decoded::Poison { reason, error } => {
                    self.dead_letter(message, reason, &error, abort).await?
                }
            }
        }
        let writes = newest_per_key(writes);
        for (write, outcome) in self.write_all(writes, abort).await? {
            match outcome {
                ItemOutcome::Created => self.indexed("created", &write),
                ItemOutcome::Updated => self.indexed("updated", &write),
                ItemOutcome::Deleted => self.indexed("deleted", &write),
                ItemOutcome::Stale => self.metrics.indexed("stale"),
                ItemOutcome::Rejected(error) => {
                    let source = batch.messages.iter().find(|m| {
                        m.partition() == write.document.partition && m.offset() == write.version()
                    });
                    // Every write was decoded from a message of this batch.
                    if let Some(message) = source {
                        self.dead_letter(message, DeadLetterReason::Rejected, &error, abort)
                            .await?;
                    }
                }
                ItemOutcome::Retry(_) => unreachable!("write_all resolves every retry"),
            }
        }
        Ok(())
    }

    fn indexed(&self, result: &'static str, write: &Write) {
        self.metrics.indexed(result);
        let now = chrono::Utc::now().timestamp_micros();
        self.metrics
            .end_to_end((now - write.occurred_at_micros).max(0) as f64 / 1e6);
    }

    /// Sends the writes, retrying the whole request on request-level failures and
    /// the failed items on item-level ones, until every item has a final outcome.
    /// Consumption is paused meanwhile, so memory stays bounded.
    async fn write_all(
        &self,
        mut pending: Vec<Write>,
        abort: &watch::Receiver<bool>,
    ) -> Result<Vec<(Write, ItemOutcome)>, Interrupted> {
        let mut done = Vec::with_capacity(pending.len());
        let mut delays = self.retry.delays();
        let mut paused = false;
        while !pending.is_empty() {
            let started = Instant::now();
            let refs: Vec<&Write> = pending.iter().collect();
            let mut abort_now = abort.clone();
            let sent = tokio::select! {
                sent = self.bulk.send(&refs) => sent,
                _ = abort_now.changed() => return Err(Interrupted::GraceElapsed),
            };
            let last_error = match sent {
                Ok(outcomes) => {
                    self.metrics
                        .bulk_sent(refs.len(), started.elapsed().as_secs_f64());
                    let mut retry = Vec::new();
                    let mut last_error = None;
                    for (write, outcome) in pending.into_iter().zip(outcomes) {
                        match outcome {
                            ItemOutcome::Retry(error) => {
                                last_error = Some(error);
                                retry.push(write);
                            }
                            outcome => done.push((write, outcome)),
                        }
                    }
                    pending = retry;
                    match last_error {
                        None => break,
                        Some(error) => {
                            self.metrics.retried("item", pending.len());
                            error
                        }
                    }
                }
                Err(error) => {
                    self.metrics.retried("request", 1);
                    error.0
                }
            };
            self.health.engine_writable(false);
            if !paused {
                self.set_paused(true);
                paused = true;
            }
            let Some(delay) = delays.next() else {
                return Err(Interrupted::RetriesExhausted(last_error));
            };
            tracing::warn!(error = %last_error, documents = pending.len(), retry_in = ?delay, "bulk write failed, retrying");
            self.wait_before_retry(delay, abort).await?;
        }
        self.health.engine_writable(true);
        if paused {
            self.set_paused(false);
        }
        Ok(done)
    }

    /// Dead-letters one message, retrying until Kafka acknowledges: a poison message
    /// must never be skipped unrecorded.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        reason: DeadLetterReason,
        error: &str,
        abort: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        tracing::warn!(
            reason = reason.as_str(),
            %error,
            partition = message.partition(),
            offset = message.offset(),
            dlq = self.dead_letters.topic(),
            "dead-lettering message"
        );
        let mut delays = self.retry.delays();
        loop {
            match self.dead_letters.send(message, reason, error).await {
                Ok(()) => {
                    self.metrics.dead_lettered(reason.as_str());
                    return Ok(());
                }
                Err(send_error) => {
                    let Some(delay) = delays.next() else {
                        return Err(Interrupted::RetriesExhausted(send_error.to_string()));
                    };
                    tracing::warn!(error = %send_error, retry_in = ?delay, "dead-letter write failed, retrying");
                    self.wait_before_retry(delay, abort).await?;
                }
            }
        }
    }

    /// Sleeps before a retry. The consumer is still polled meanwhile: that keeps
    /// this member in its group (a silent consumer is evicted after
    /// `max.poll.interval.ms`), and anything already fetched waits for the next batch.
    async fn wait_before_retry(
        &self,
        delay: Duration,
        abort: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let mut abort = abort.clone();
        if *abort.borrow() {
            return Err(Interrupted::GraceElapsed);
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                _ = abort.changed() => return Err(Interrupted::GraceElapsed),
                received = self.consumer.recv() => match received {
                    Ok(message) => self.lock_carried().push(message.detach()),
                    Err(error) => tracing::debug!(%error, "kafka consume error while paused"),
                },
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
            Ok(()) => tracing::info!(
                paused,
                partitions = assignment.count(),
                "consumption paused state changed"
            ),
            Err(error) => tracing::warn!(%error, paused, "pausing or resuming consumption failed"),
        }
    }

    fn lock_carried(&self) -> std::sync::MutexGuard<'_, Vec<OwnedMessage>> {
        // The lock is never held across an await or a panic point, so poisoning
        // cannot leave the buffer half-written; take it either way.
        self.carried
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn store_offsets(&self, batch: &Batch) {
        // Fails only for partitions revoked meanwhile; their new owner re-reads
        // them, and versions make that harmless.
        if let Err(error) = self.consumer.store_offsets(&next_offsets(&batch.messages)) {
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
