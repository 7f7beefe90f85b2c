//! The stages joined: consume → decode → batch → coalesce → bulk write → classify →
//! dead-letter → store offsets. One batch is in flight at a time, so offsets are
//! stored in order and a stored offset never outruns the work below it.

use std::sync::Arc;
use std::time::Instant;

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
use crate::health::Health;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;

/// Why the pipeline stopped before finishing a batch.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("shutdown requested while retrying; the batch is left uncommitted")]
    Shutdown,
    #[error("gave up after the configured retries: {0}")]
    RetriesExhausted(String),
}

pub struct Pipeline {
    pub consumer: Arc<GroupConsumer>,
    pub codec: Codec,
    pub bulk: BulkWriter,
    pub dead_letters: DeadLetters,
    pub limits: BatchLimits,
    pub retry: RetryPolicy,
    pub health: Arc<Health>,
    pub metrics: Metrics,
}

impl Pipeline {
    /// Runs until `shutdown` turns true: the batch in flight is finished, stored
    /// offsets are committed, and it returns.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let outcome = loop {
            let Some(batch) = next_batch(&self.consumer, &self.limits, &mut shutdown).await else {
                break Ok(());
            };
            match self.handle(&batch, &shutdown).await {
                Ok(()) => self.store_offsets(&batch),
                Err(Interrupted::Shutdown) => break Ok(()),
                Err(error @ Interrupted::RetriesExhausted(_)) => break Err(error.into()),
            }
        };
        self.commit();
        outcome
    }

    async fn handle(
        &self,
        batch: &Batch,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        self.metrics.consumed(batch.len());
        let mut writes = Vec::with_capacity(batch.len());
        for message in &batch.messages {
            match decode(&self.codec, message) {
                Decoded::Write(write) => writes.push(write),
                Decoded::Poison { reason, error } => {
                    self.dead_letter(message, reason, &error, shutdown).await?
                }
            }
        }
        let writes = newest_per_key(writes);
        for (write, outcome) in self.write_all(writes, shutdown).await? {
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
                        self.dead_letter(message, DeadLetterReason::Rejected, &error, shutdown)
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
    async fn write_all(
        &self,
        mut pending: Vec<Write>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Vec<(Write, ItemOutcome)>, Interrupted> {
        let mut done = Vec::with_capacity(pending.len());
        let mut delays = self.retry.delays();
        while !pending.is_empty() {
            let started = Instant::now();
            let refs: Vec<&Write> = pending.iter().collect();
            let last_error = match self.bulk.send(&refs).await {
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
                        None => {
                            self.health.engine_writable(true);
                            break;
                        }
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
            let Some(delay) = delays.next() else {
                return Err(Interrupted::RetriesExhausted(last_error));
            };
            tracing::warn!(error = %last_error, documents = pending.len(), retry_in = ?delay, "bulk write failed, retrying");
            self.pause(delay, shutdown).await?;
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
        shutdown: &watch::Receiver<bool>,
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
                    self.pause(delay, shutdown).await?;
                }
            }
        }
    }

    async fn pause(
        &self,
        delay: std::time::Duration,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let mut shutdown = shutdown.clone();
        if *shutdown.borrow() {
            return Err(Interrupted::Shutdown);
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            _ = shutdown.changed() => Err(Interrupted::Shutdown),
        }
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
