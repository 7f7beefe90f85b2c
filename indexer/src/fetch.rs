//! Stage 3's driver, fetch: reading batches from a consumer while the previous ones
//! are written, and handing one over each time the writer asks.

use std::sync::Arc;

use citypop_schemas::event::Codec;
use futures::{FutureExt as _, Stream, StreamExt as _};
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::batch::{Batch, BatchLimits};

/// Joins fetching to writing: the fetch loop hands a batch over only when the writer
/// asks for one, and until then the batch keeps growing. A busy writer so gets
/// fewer, larger batches, which coalesce more: a lagging indexer writes less.
pub fn handover() -> (BatchSender, BatchReceiver) {
    let wanted = Arc::new(Semaphore::new(0));
    let (sender, receiver) = mpsc::channel(1);
    (
        BatchSender {
            wanted: wanted.clone(),
            batches: sender,
        },
        BatchReceiver {
            wanted,
            batches: receiver,
        },
    )
}

pub struct BatchSender {
    /// One permit per batch the writer asked for.
    wanted: Arc<Semaphore>,
    batches: mpsc::Sender<Batch>,
}

impl BatchSender {
    /// Hands `batch` over; `false` once the writer is gone.
    pub async fn send(&self, batch: Batch) -> bool {
        self.batches.send(batch).await.is_ok()
    }
}

pub struct BatchReceiver {
    wanted: Arc<Semaphore>,
    batches: mpsc::Receiver<Batch>,
}

impl BatchReceiver {
    /// Asks for the next batch and waits for it; `None` once fetching ended.
    pub async fn recv(&mut self) -> Option<Batch> {
        // A request from a call given up on still stands: ask once.
        if self.wanted.available_permits() == 0 {
            self.wanted.add_permits(1);
        }
        self.batches.recv().await
    }
}

impl Drop for BatchReceiver {
    /// A fetch loop waiting for the writer learns it is gone.
    fn drop(&mut self) {
        self.wanted.close();
    }
}

/// Reads batches from a consumer: what is read, and into what limits. Only the
/// fetcher ever polls the consumer: two pollers can lose a wake-up and stall.
pub struct Fetcher<'a, C: ConsumerContext + 'static> {
    pub consumer: &'a StreamConsumer<C>,
    pub codec: &'a Codec,
    pub limits: BatchLimits,
    /// Messages consumed and not yet handed to the writer.
    pub waiting: Gauge,
}

impl<C: ConsumerContext + 'static> Fetcher<'_, C> {
    /// Waits for a first message, then gathers more until the batch is full or the
    /// first one has waited `linger`. The overflow of the previous batch comes
    /// first. `cities` is room made ahead for that many (the previous batch's
    /// count is a good guess). `None` once `stop` turned true.
    pub async fn gather(
        &self,
        overflow: &mut Vec<OwnedMessage>,
        cities: usize,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Batch> {
        let mut batch = Batch::with_capacity(cities);
        for message in overflow.drain(..) {
            batch.push(self.codec, message);
        }
        let mut messages = self.consumer.stream();
        while batch.is_empty() {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                Some(received) = messages.next() => match received {
                    Ok(message) => {
                        self.add(&mut batch, overflow, message.detach());
                        self.add_ready(&mut messages, &mut batch, overflow);
                    }
                    Err(error) => tracing::warn!(%error, "kafka consume error"),
                },
                _ = stop.changed() => return None,
            }
        }
        let deadline = tokio::time::Instant::now() + self.limits.linger;
        while !batch.is_full(&self.limits) {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    self.add(&mut batch, overflow, message.detach());
                    self.add_ready(&mut messages, &mut batch, overflow);
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, "kafka consume error");
                    break;
                }
                // A consumer's stream never ends.
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Goes on adding to `batch`, up to its limits, until the writer asks for it
    /// and `flow` lets it go; then the caller hands it over. While consumption is
    /// paused or held the consumer is still polled, since one silent for
    /// `max.poll.interval.ms` leaves its group (and rebalances happen in the poll);
    /// what arrives beyond a full batch is kept in `overflow` for the next one, so
    /// offsets stay in order. `false` once `stop` turned true or the writer is gone.
    pub async fn grow_until_wanted(
        &self,
        batch: &mut Batch,
        overflow: &mut Vec<OwnedMessage>,
        writer: &BatchSender,
        flow: &watch::Receiver<Flow>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let mut flow = flow.clone();
        let mut asked = false;
        let mut messages = self.consumer.stream();
        loop {
            let now = *flow.borrow_and_update();
            if asked && now != Flow::Held {
                return true;
            }
            let room = !batch.is_full(&self.limits);
            tokio::select! {
                permit = writer.wanted.acquire(), if !asked => match permit {
                    Ok(permit) => {
                        permit.forget();
                        asked = true;
                    }
                    Err(_closed) => return false,
                },
                Some(received) = messages.next(), if room || now != Flow::Flowing => match received {
                    Ok(message) => {
                        self.add(batch, overflow, message.detach());
                        self.add_ready(&mut messages, batch, overflow);
                    }
                    Err(error) => tracing::debug!(%error, "kafka consume error while waiting for the writer"),
                },
                Ok(()) = flow.changed() => {}
                _ = stop.changed() => return false,
            }
        }
    }

    /// Adds the messages the consumer already holds to the batch, up to its limits,
    /// without waiting. Taking them one `select!` at a time made and dropped a
    /// timer or a semaphore waiter, two watch waiters and a waker slot per message,
    /// more work than the message itself. A consume error ends the draining.
    fn add_ready<'c>(
        &self,
        messages: &mut (impl Stream<Item = KafkaResult<BorrowedMessage<'c>>> + Unpin),
        batch: &mut Batch,
        overflow: &mut Vec<OwnedMessage>,
    ) {
        while !batch.is_full(&self.limits) {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => self.add(batch, overflow, message.detach()),
                Some(Some(Err(error))) => {
                    tracing::debug!(%error, "kafka consume error");
                    return;
                }
                Some(None) | None => return,
            }
        }
    }

    /// Adds a consumed message to the batch, or to the overflow once the batch is
    /// full.
    fn add(&self, batch: &mut Batch, overflow: &mut Vec<OwnedMessage>, message: OwnedMessage) {
        if batch.is_full(&self.limits) {
            overflow.push(message);
        } else {
            batch.push(self.codec, message);
        }
        self.waiting.set((batch.len() + overflow.len()) as i64);
    }

    /// The batch went to the writer: what waits now is the overflow.
    pub fn handed_over(&self, overflow: &[OwnedMessage]) {
        self.waiting.set(overflow.len() as i64);
    }
}

/// Whether fetched batches flow to the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Flowing,
    /// The engine refuses writes: consumption is paused; batches still go to the
    /// writer when it asks (it retries them).
    Paused,
    /// Nothing may be written (the topic guard cannot vouch for the topic):
    /// consumption is paused and no batch is handed over.
    Held,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_wanted_only_once_the_writer_asks() {
        let (writer, mut batches) = handover();
        assert_eq!(writer.wanted.available_permits(), 0, "nobody asked yet");
        let asking = tokio::spawn(async move {
            let batch = batches.recv().await;
            (batch.map(|b| b.len()), batches)
        });
        let permit = writer.wanted.acquire().await.expect("the writer asks");
        permit.forget();
        assert!(writer.send(Batch::default()).await);
        let (received, batches) = asking.await.unwrap();
        assert_eq!(received, Some(0));
        assert_eq!(writer.wanted.available_permits(), 0, "one ask, one batch");
        drop(batches);
        assert!(
            writer.wanted.acquire().await.is_err(),
            "a fetch loop waiting for a writer that is gone stops waiting"
        );
    }
}
