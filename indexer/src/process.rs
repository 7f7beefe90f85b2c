//! Stages 5 to 7 for one batch, shared by the live indexer and `indexer replay`:
//! bulk writes with retries → classify. What happens to poison, and how a retry
//! waits, is the caller's business (its [`Host`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Semaphore, watch};

use citypop_schemas::event::Codec;
use elasticsearch::Elasticsearch;
use rdkafka::message::OwnedMessage;

use crate::batch::Batch;
use crate::bulk::{BulkWriter, ItemOutcome};
use crate::config::Config;
use crate::consume::BatchReceiver;
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
    pub bulk_limits: BulkLimits,
    /// Bulk requests failing now: the engine counts as writable again only once
    /// none is.
    failing: AtomicUsize,
    /// One permit per bulk request allowed in flight.
    requests: Semaphore,
}

/// Batches written at once (see [`Processor::write_batches`]).
const BATCHES_IN_FLIGHT: usize = 2;

/// How a batch's writes are split into bulk requests.
#[derive(Debug, Clone, Copy)]
pub struct BulkLimits {
    /// Documents per bulk request.
    pub documents: usize,
    /// Bulk requests in flight at once.
    pub concurrency: usize,
}

impl Processor {
    /// The processor `config` asks for, writing through `target` (an alias or index).
    pub fn for_config(
        config: &Config,
        client: Elasticsearch,
        target: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            codec: crate::codec(config)?,
            bulk: BulkWriter::new(client, target),
            retry: RetryPolicy {
                min_delay: config.retry_min_delay,
                max_delay: config.retry_max_delay,
                max_attempts: config.retry_max_attempts,
            },
            metrics,
            bulk_limits: BulkLimits {
                documents: config.bulk_max_documents,
                concurrency: config.bulk_concurrency,
            },
            failing: AtomicUsize::new(0),
            requests: Semaphore::new(config.bulk_concurrency.max(1)),
        })
    }

    /// Handles every message of the batch: once it returns `Ok`, each one is
    /// indexed, stale, or in the host's hands as poison, and its offsets may be
    /// stored. The batch holds one message per city, so its bulk requests share no
    /// document and may be in flight together in any order.
    pub(crate) async fn process(&self, batch: &Batch, host: &impl Host) -> Result<(), Interrupted> {
        self.metrics.consumed(batch.len());
        for poison in &batch.poison {
            host.poison(&poison.message, poison.reason, &poison.error)
                .await?;
        }
        let messages: Vec<&OwnedMessage> = batch.newest.messages().collect();
        futures::stream::iter(messages.chunks(self.bulk_limits.documents.max(1)))
            .map(|chunk| self.write_chunk(chunk, batch, host))
            .buffer_unordered(self.bulk_limits.concurrency.max(1))
            .try_collect()
            .await
    }

    /// Writes the batches that arrive on `batches`, two at a time, and hands each
    /// finished one to `done` in arrival order, so offsets are stored in order.
    /// With two, the next batch's requests start as soon as a request of the first
    /// one ends, and the engine never waits on a batch's slowest request. Two
    /// batches may hold the same city; its versions decide, whichever request lands
    /// first. Returns once `batches` is closed and drained, or at the first batch
    /// that could not be finished.
    pub(crate) async fn write_batches(
        &self,
        host: &impl Host,
        batches: &mut BatchReceiver,
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
                received = batches.recv(), if open && in_flight.len() < BATCHES_IN_FLIGHT => match received {
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

    /// One bulk request's worth of the batch's messages, decoded (again: decoding
    /// them when they joined the batch only chose them), written, and judged.
    async fn write_chunk(
        &self,
        chunk: &[&OwnedMessage],
        batch: &Batch,
        host: &impl Host,
    ) -> Result<(), Interrupted> {
        // Bounds requests in flight across both batches being written.
        // The semaphore is never closed.
        let _request = self
            .requests
            .acquire()
            .await
            .map_err(|_| Interrupted::Aborted)?;
        let mut writes = Vec::with_capacity(chunk.len());
        for message in chunk {
            match decode(&self.codec, message) {
                Decoded::Write(write) => writes.push(write),
                Decoded::Poison { reason, error } => host.poison(message, reason, &error).await?,
            }
        }
        for (write, outcome) in self.write_all(writes, host).await? {
            match outcome {
                ItemOutcome::Created => self.indexed("created", &write),
                ItemOutcome::Updated => self.indexed("updated", &write),
                ItemOutcome::Deleted => self.indexed("deleted", &write),
                ItemOutcome::Stale => self.metrics.indexed("stale"),
                ItemOutcome::Rejected(error) => {
                    // Every write was decoded from the batch's message for its city.
                    if let Some(message) = batch.newest.get(write.key()) {
                        host.poison(message, DeadLetterReason::Rejected, &error)
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
                failing = true;
                if self.failing.fetch_add(1, Ordering::SeqCst) == 0 {
                    host.engine_writable(false);
                }
            }
            let Some(delay) = delays.next() else {
                return Err(Interrupted::RetriesExhausted(last_error));
            };
            tracing::warn!(error = %last_error, documents = pending.len(), retry_in = ?delay, "bulk write failed, retrying");
            host.wait_before_retry(delay).await?;
        }
        if failing && self.failing.fetch_sub(1, Ordering::SeqCst) == 1 {
            host.engine_writable(true);
        }
        Ok(done)
    }
}
