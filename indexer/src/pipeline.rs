//! The fetch-and-write loop, one for the live indexer and `indexer replay`: the next
//! batch is gathered while the previous ones are written, handed over when the
//! writer asks for it, written in order, and each finished batch is reported. What
//! differs between the two is passed in: when to stop ([`FetchPlan`]), whether
//! consumption is paused, and where finished batches go.

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use tokio::sync::watch;

use crate::batch::{Batch, BatchLimits};
use crate::batch_writer::BatchWriter;
use crate::bulk::BulkSink;
use crate::dead_letter::PoisonSink;
use crate::fetch::{Fetcher, Flow, handover};
use crate::retry::Interrupted;

/// What the loop does next, as its caller decides before each batch.
pub enum Next {
    Gather,
    /// Everything there was to read is read.
    Drained,
    /// The caller was told to stop.
    Stopped,
}

/// How the loop ended when nothing failed: every gathered batch is written.
#[derive(Debug, PartialEq, Eq)]
pub enum LoopEnd {
    Drained,
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Write(#[from] Interrupted),
    #[error(transparent)]
    Fetch(anyhow::Error),
}

/// The caller's side of fetching.
pub(crate) trait FetchPlan {
    /// Runs before each batch is gathered.
    async fn before_batch(&mut self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<Next>;

    /// The longest wait for a batch's first message; `None` waits as long as it
    /// takes.
    fn first_message_within(&self) -> Option<Duration> {
        None
    }

    /// A batch was gathered and is handed to the writer.
    fn gathered(&mut self, _batch: &Batch) {}
}

/// The two ends of the loop: where batches come from and what writes them.
pub(crate) struct Pipeline<'a, C: ConsumerContext + 'static, S, P> {
    fetcher: Fetcher<'a, C>,
    writer: &'a BatchWriter<S, P>,
}

impl<'a, C: ConsumerContext + 'static, S: BulkSink, P: PoisonSink> Pipeline<'a, C, S, P> {
    /// Batches read from `consumer` within `limits`, written by `writer`.
    pub fn new(
        consumer: &'a StreamConsumer<C>,
        writer: &'a BatchWriter<S, P>,
        limits: BatchLimits,
        waiting: Gauge,
    ) -> Self {
        Self {
            fetcher: Fetcher {
                consumer,
                codec: &writer.codec,
                limits,
                waiting,
            },
            writer,
        }
    }

    /// Fetches and writes until the plan says it is drained, `stop` turns true, or
    /// a batch cannot be finished. `written` hears each finished batch, in the order
    /// the batches were gathered. While `flow` is not flowing the consumer is still
    /// polled, and what arrives waits in memory for the writer.
    pub async fn run(
        self,
        plan: &mut impl FetchPlan,
        flow: &watch::Receiver<Flow>,
        stop: watch::Receiver<bool>,
        written: impl FnMut(&Batch),
    ) -> Result<LoopEnd, LoopError> {
        fetch_and_write(self.fetcher, self.writer, plan, flow, stop, written).await
    }
}

async fn fetch_and_write<C, S, P>(
    fetcher: Fetcher<'_, C>,
    writer: &BatchWriter<S, P>,
    plan: &mut impl FetchPlan,
    flow: &watch::Receiver<Flow>,
    mut stop: watch::Receiver<bool>,
    written: impl FnMut(&Batch),
) -> Result<LoopEnd, LoopError>
where
    C: ConsumerContext + 'static,
    S: BulkSink,
    P: PoisonSink,
{
    let (to_writer, mut batches) = handover();
    let fetch = async move {
        let mut overflow = Vec::new();
        // The cities of the batch before, to make room for as many in the next.
        let mut cities = 0;
        loop {
            match plan.before_batch(&mut stop).await? {
                Next::Gather => {}
                Next::Drained => return Ok(LoopEnd::Drained),
                Next::Stopped => return Ok(LoopEnd::Stopped),
            }
            let gathering = fetcher.gather(&mut overflow, cities, &mut stop);
            let gathered = match plan.first_message_within() {
                None => gathering.await,
                Some(limit) => tokio::time::timeout(limit, gathering).await.map_err(|_| {
                    anyhow::anyhow!("no message within {limit:?} before the end offsets")
                })?,
            };
            let Some(mut batch) = gathered else {
                return Ok(LoopEnd::Stopped);
            };
            if !fetcher
                .grow_until_wanted(&mut batch, &mut overflow, &to_writer, flow, &mut stop)
                .await
            {
                return Ok(LoopEnd::Stopped);
            }
            plan.gathered(&batch);
            fetcher.handed_over(&overflow);
            cities = batch.newest.len();
            if !to_writer.send(batch).await {
                return Ok(LoopEnd::Stopped);
            }
        }
    };
    let write = writer.write_batches(&mut batches, written);
    tokio::pin!(fetch, write);
    // When fetching ends, the batches already gathered are still written; when
    // writing fails, fetching is dropped with it. Writing cannot end well first:
    // it ends well only once fetching ended and dropped its side of the handover.
    tokio::select! {
        fetched = &mut fetch => {
            let end = fetched.map_err(LoopError::Fetch)?;
            write.await?;
            Ok(end)
        }
        written = &mut write => {
            written?;
            fetch.await.map_err(LoopError::Fetch)
        }
    }
}
