//! Stages 3 to 7 for one batch, shared by the live indexer and `indexer replay`:
//! decode → coalesce → bulk write with retries → classify. What happens to poison,
//! and how a retry waits, is the caller's business (its [`Host`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};

use citypop_schemas::event::Codec;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::batch::Batch;
use crate::bulk::{BulkWriter, ItemOutcome};
use crate::coalesce::newest_per_key;
use crate::decode::{DeadLetterReason, Decoded, Write, decode};
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;

/// Why a batch was not finished.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("stopped before the batch was finished; it is left uncommitted")]
    Aborted,
    #[error("gave up after the configured retries: {0}")]
    RetriesExhausted(String),
}

/// What the caller decides for a batch in progress.
pub(crate) trait Host {
    /// Writes to the engine failed (`false`) or work again (`true`).
    fn engine_writable(&self, writable: bool);
    /// Waits `delay` before a retry; `Err` when the batch must be abandoned.
    async fn wait_before_retry(&self, delay: Duration) -> Result<(), Interrupted> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.aborted() => Err(Interrupted::Aborted),
        }
    }
    /// True once the batch must be abandoned.
    fn abort_signal(&self) -> &watch::Receiver<bool>;
    /// Resolves when the batch must be abandoned at once.
    async fn aborted(&self) {
        until_set(self.abort_signal()).await;
    }
    /// Takes a message that cannot be indexed.
    async fn poison(
        &self,
        message: &OwnedMessage,
        reason: DeadLetterReason,
        error: &str,
    ) -> Result<(), Interrupted>;
}

/// Resolves once `signal` is true (at once if it already is).
async fn until_set(signal: &watch::Receiver<bool>) {
    let mut signal = signal.clone();
    // An error means the sender is gone: the signal can no longer be set.
    if signal.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub struct Processor {
    pub codec: Codec,
    pub bulk: BulkWriter,
    pub retry: RetryPolicy,
    pub metrics: Arc<Metrics>,
}

impl Processor {
    /// Handles every message of the batch: once it returns `Ok`, each one is
    /// indexed, stale, or in the host's hands as poison, and its offset may be stored.
    pub(crate) async fn process(&self, batch: &Batch, host: &impl Host) -> Result<(), Interrupted> {
        self.metrics.consumed(batch.len());
        let mut writes = Vec::with_capacity(batch.len());
        for message in &batch.messages {
            match decode(&self.codec, message) {
                Decoded::Write(write) => writes.push(write),
                Decoded::Poison { reason, error } => host.poison(message, reason, &error).await?,
            }
        }
        let writes = newest_per_key(writes);
        for (write, outcome) in self.write_all(writes, host).await? {
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
                        host.poison(message, DeadLetterReason::Rejected, &error)
                            .await?;
                    }
                }
                ItemOutcome::Retry(_) => unreachable!("write_all resolves every retry"),
            }
        }
        Ok(())
    }

    /// Processes the batches that arrive on `batches`, up to `concurrency` at once,
    /// and hands each finished batch to `done` in arrival order, so offsets are
    /// stored in order. Concurrent batches may hold the same city; its versions
    /// decide, whichever bulk request lands first. Returns once `batches` is closed
    /// and drained, or at the first batch that could not be finished.
    pub(crate) async fn process_in_order(
        &self,
        host: &impl Host,
        concurrency: usize,
        batches: &mut mpsc::Receiver<Batch>,
        mut done: impl FnMut(&Batch),
    ) -> Result<(), Interrupted> {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                Some((batch, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    result?;
                    done(&batch);
                }
                received = batches.recv(), if open && in_flight.len() < concurrency.max(1) => match received {
                    Some(batch) => in_flight.push_back(async move {
                        let result = self.process(&batch, host).await;
                        (batch, result)
                    }),
                    None => open = false,
                },
                else => return Ok(()),
            }
        }
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
        host: &impl Host,
    ) -> Result<Vec<(Write, ItemOutcome)>, Interrupted> {
        let mut done = Vec::with_capacity(pending.len());
        let mut delays = self.retry.delays();
        let mut failing = false;
        while !pending.is_empty() {
            let started = Instant::now();
            let refs: Vec<&Write> = pending.iter().collect();
            let sent = tokio::select! {
                sent = self.bulk.send(&refs) => sent,
                () = host.aborted() => return Err(Interrupted::Aborted),
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
            if !failing {
                host.engine_writable(false);
                failing = true;
            }
            let Some(delay) = delays.next() else {
                return Err(Interrupted::RetriesExhausted(last_error));
            };
            tracing::warn!(error = %last_error, documents = pending.len(), retry_in = ?delay, "bulk write failed, retrying");
            host.wait_before_retry(delay).await?;
        }
        if failing {
            host.engine_writable(true);
        }
        Ok(done)
    }
}
