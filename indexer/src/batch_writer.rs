//! Stages 5 to 7 for whole batches, shared by the live indexer and `indexer replay`:
//! bulk writes with retries → classify → poison to its sink. Batches are written two
//! at a time and reported finished in the order they arrived, so offsets are stored
//! in order.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use citypop_schemas::event::Codec;
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use opentelemetry::KeyValue;
use rdkafka::message::OwnedMessage;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::batch::Batch;
use crate::bulk::{BulkLimits, BulkSink, ItemAttempt, ItemOutcome, RequestFailed};
use crate::coalesce::Newest;
use crate::dead_letter::{DeadLetterReason, PoisonCause, PoisonSink};
use crate::decode::Write;
use crate::fetch::BatchReceiver;
use crate::metrics::{IndexedResult, Metrics, RedriveResult, RetryReason};
use crate::retry::{Interrupted, Retry};

/// Batches written at once (see [`BatchWriter::write_batches`]).
const BATCHES_IN_FLIGHT: usize = 2;

/// Why one bulk attempt did not finish every write of a request.
#[derive(Debug, thiserror::Error)]
enum BulkFailure {
    #[error("{0}")]
    Request(RequestFailed),
    #[error("{pending} documents to retry: {last_error}")]
    Items { pending: usize, last_error: String },
}

/// Writes batches through a [`BulkSink`], handing poison to a [`PoisonSink`].
pub(crate) struct BatchWriter<S, P> {
    pub codec: Arc<Codec>,
    sink: S,
    poison: P,
    retry: Retry,
    metrics: Arc<Metrics>,
    limits: BulkLimits,
    /// Whether the engine takes writes: false from a request's first failure until
    /// no request is failing any more.
    writable: watch::Sender<bool>,
    /// Bulk requests failing now.
    failing: AtomicUsize,
    /// One permit per bulk request allowed in flight.
    requests: Semaphore,
}

impl<S: BulkSink, P: PoisonSink> BatchWriter<S, P> {
    pub fn new(
        codec: Arc<Codec>,
        sink: S,
        poison: P,
        retry: Retry,
        metrics: Arc<Metrics>,
        limits: BulkLimits,
    ) -> Self {
        Self {
            codec,
            sink,
            poison,
            retry,
            metrics,
            limits,
            writable: watch::channel(true).0,
            failing: AtomicUsize::new(0),
            requests: Semaphore::new(limits.concurrency.max(1)),
        }
    }

    /// Follows whether the engine takes writes.
    pub fn engine_writable(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }

    pub fn poison_sink(&self) -> &P {
        &self.poison
    }

    pub fn limits(&self) -> BulkLimits {
        self.limits
    }

    /// Writes the batches that arrive on `batches`, two at a time, and hands each
    /// finished one to `done` in arrival order, so offsets are stored in order.
    /// With two, the next batch's requests start as soon as a request of the first
    /// one ends, and the engine never waits on a batch's slowest request. Two
    /// batches may hold the same city; its versions decide, whichever request lands
    /// first. Returns once `batches` is closed and drained, or at the first batch
    /// that could not be finished.
    pub async fn write_batches(
        &self,
        batches: &mut BatchReceiver,
        mut done: impl FnMut(&Batch),
    ) -> Result<(), Interrupted> {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                Some((batch, result, span)) = in_flight.next(), if !in_flight.is_empty() => {
                    result?;
                    done(&batch);
                    if exported(&span) {
                        // `done` stores the batch's offsets, for the next commit.
                        span.add_event("offsets stored for commit", Vec::new());
                    }
                }
                received = batches.recv(), if open && in_flight.len() < BATCHES_IN_FLIGHT => match received {
                    Some(batch) => in_flight.push_back(async move {
                        let span = batch_span(&batch);
                        let result = self.write_batch(&batch).instrument(span.clone()).await;
                        (batch, result, span)
                    }),
                    None => open = false,
                },
                else => return Ok(()),
            }
        }
    }

    /// Handles every message of the batch: once it returns `Ok`, each one is
    /// indexed, stale, or taken by the poison sink, and its offsets may be stored.
    /// The batch holds one message per city, so its bulk requests share no document
    /// and may be in flight together in any order.
    async fn write_batch(&self, batch: &Batch) -> Result<(), Interrupted> {
        self.metrics.consumed(batch.len());
        for poison in &batch.poison {
            self.take_poison(&poison.message, &poison.cause).await?;
        }
        let newest: Vec<&Newest> = batch.newest.entries().collect();
        futures::stream::iter(newest.chunks(self.limits.documents.max(1)))
            .map(|chunk| self.write_request(chunk, batch))
            .buffer_unordered(self.limits.concurrency.max(1))
            .try_collect()
            .await
    }

    /// One bulk request's worth of the batch's writes (decoded when their messages
    /// joined the batch), written, and judged.
    async fn write_request(&self, chunk: &[&Newest], batch: &Batch) -> Result<(), Interrupted> {
        // A child of the batch's span, linked to the producing span of each message
        // it writes.
        let span = tracing::info_span!(
            "indexer.bulk",
            otel.kind = "client",
            documents = chunk.len(),
        );
        if exported(&span) {
            link_messages(&span, chunk.iter().map(|newest| &newest.message));
        }
        self.write_request_in_span(chunk, batch)
            .instrument(span)
            .await
    }

    async fn write_request_in_span(
        &self,
        chunk: &[&Newest],
        batch: &Batch,
    ) -> Result<(), Interrupted> {
        // Bounds requests in flight across both batches being written.
        // The semaphore is never closed.
        let _request = self
            .requests
            .acquire()
            .await
            .map_err(|_| Interrupted::Aborted)?;
        let writes = chunk.iter().map(|newest| &newest.write).collect();
        let outcomes = self.write_with_retries(writes).await?;
        // Every outcome is final now: the clock is read once for all of them, and
        // each counter moves once per request, not once per document.
        let written_at = chrono::Utc::now().timestamp_micros();
        let (mut created, mut updated, mut deleted, mut stale) = (0, 0, 0, 0);
        let mut rejected = Vec::new();
        for (write, outcome) in outcomes {
            if write.redriven {
                match outcome {
                    ItemOutcome::Stale => self.metrics.redriven(RedriveResult::Superseded),
                    ItemOutcome::Rejected(_) => {}
                    _ => self.metrics.redriven(RedriveResult::Indexed),
                }
            }
            let written = match outcome {
                ItemOutcome::Created => &mut created,
                ItemOutcome::Updated => &mut updated,
                ItemOutcome::Deleted => &mut deleted,
                ItemOutcome::Stale => {
                    stale += 1;
                    continue;
                }
                ItemOutcome::Rejected(error) => {
                    rejected.push((write, error));
                    continue;
                }
            };
            *written += 1;
            self.metrics
                .end_to_end((written_at - write.occurred_at_micros).max(0) as f64 / 1e6);
        }
        for (result, count) in [
            (IndexedResult::Created, created),
            (IndexedResult::Updated, updated),
            (IndexedResult::Deleted, deleted),
            (IndexedResult::Stale, stale),
        ] {
            if count > 0 {
                self.metrics.indexed(result, count);
            }
        }
        for (write, error) in rejected {
            // Every write was decoded from the batch's message for its city.
            if let Some(newest) = batch.newest.get(write.key()) {
                let cause = PoisonCause {
                    reason: DeadLetterReason::Rejected,
                    error,
                };
                self.take_poison(&newest.message, &cause).await?;
            }
        }
        Ok(())
    }

    /// Hands poison to the sink and counts it once the sink has it.
    async fn take_poison(
        &self,
        message: &OwnedMessage,
        cause: &PoisonCause,
    ) -> Result<(), Interrupted> {
        self.poison.take(message, cause).await?;
        self.metrics.dead_lettered(cause.reason);
        Ok(())
    }

    /// Sends the writes, retrying the whole request on request-level failures and
    /// the failed items on item-level ones, until every item has a final outcome.
    async fn write_with_retries<'w>(
        &self,
        writes: Vec<&'w Write>,
    ) -> Result<Vec<(&'w Write, ItemOutcome)>, Interrupted> {
        let finished = Mutex::new(Vec::with_capacity(writes.len()));
        let pending = Mutex::new(writes);
        let (pending_ref, finished_ref) = (&pending, &finished);
        let mut failing = false;
        let result = self
            .retry
            .run(
                "bulk write",
                move || async move {
                    let writes = std::mem::take(&mut *lock(pending_ref));
                    match self.attempt(writes).await {
                        Attempted::AllDone(done) => {
                            lock(finished_ref).extend(done);
                            Ok(())
                        }
                        Attempted::SomeToRetry {
                            done,
                            retry,
                            last_error,
                        } => {
                            lock(finished_ref).extend(done);
                            let pending = retry.len();
                            *lock(pending_ref) = retry;
                            Err(BulkFailure::Items {
                                pending,
                                last_error,
                            })
                        }
                        Attempted::RequestFailed { writes, error } => {
                            *lock(pending_ref) = writes;
                            Err(BulkFailure::Request(error))
                        }
                    }
                },
                |failure, _| {
                    match failure {
                        BulkFailure::Request(_) => self.metrics.retried(RetryReason::Request, 1),
                        BulkFailure::Items { pending, .. } => {
                            self.metrics.retried(RetryReason::Item, *pending)
                        }
                    }
                    if !failing {
                        failing = true;
                        if self.failing.fetch_add(1, Ordering::SeqCst) == 0 {
                            self.writable.send_replace(false);
                        }
                    }
                },
            )
            .await;
        if failing && self.failing.fetch_sub(1, Ordering::SeqCst) == 1 && result.is_ok() {
            self.writable.send_replace(true);
        }
        result?;
        Ok(finished.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// One bulk request for `writes`.
    async fn attempt<'w>(&self, writes: Vec<&'w Write>) -> Attempted<'w> {
        let started = Instant::now();
        let attempts = match self.sink.send(&writes).await {
            Ok(attempts) => attempts,
            Err(error) => {
                self.metrics.status.error("bulk", &error.0);
                return Attempted::RequestFailed { writes, error };
            }
        };
        self.metrics.status.engine_answered();
        self.metrics
            .bulk_sent(writes.len(), started.elapsed().as_secs_f64());
        let mut done = Vec::with_capacity(writes.len());
        let mut retry = Vec::new();
        let mut last_error = None;
        for (write, attempt) in writes.into_iter().zip(attempts) {
            match attempt {
                ItemAttempt::Done(outcome) => done.push((write, outcome)),
                ItemAttempt::Retry(error) => {
                    last_error = Some(error);
                    retry.push(write);
                }
            }
        }
        match last_error {
            None => Attempted::AllDone(done),
            Some(last_error) => {
                self.metrics.status.error("bulk", &last_error);
                Attempted::SomeToRetry {
                    done,
                    retry,
                    last_error,
                }
            }
        }
    }
}

/// What one bulk request did with its writes.
enum Attempted<'w> {
    AllDone(Vec<(&'w Write, ItemOutcome)>),
    SomeToRetry {
        done: Vec<(&'w Write, ItemOutcome)>,
        retry: Vec<&'w Write>,
        last_error: String,
    },
    /// Nothing is known about any item: all of them are sent again.
    RequestFailed {
        writes: Vec<&'w Write>,
        error: RequestFailed,
    },
}

/// A batch's span: its own root, since a batch merges many traces, which its links
/// (one per message that has a trace context) lead to.
fn batch_span(batch: &Batch) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "indexer.batch",
        otel.kind = "consumer",
        events = batch.len(),
        documents = batch.newest.len(),
        poison = batch.poison.len(),
        trace_id = tracing::field::Empty,
    );
    if exported(&span) {
        // In every log line of the batch, to find its trace.
        if let Some(trace_id) = span.in_scope(citypop_runtime::telemetry::current_trace_id) {
            span.record("trace_id", trace_id);
        }
        let messages = batch
            .newest
            .entries()
            .map(|newest| &newest.message)
            .chain(batch.poison.iter().map(|p| &p.message));
        link_messages(&span, messages);
        // Each message was decoded and coalesced as it joined the batch.
        span.add_event(
            "decoded",
            vec![
                KeyValue::new("events", batch.len() as i64),
                KeyValue::new("documents", batch.newest.len() as i64),
                KeyValue::new("poison", batch.poison.len() as i64),
            ],
        );
    }
    span
}

/// Whether `span` is exported: only then is reading every message's trace context
/// worth its cost.
fn exported(span: &tracing::Span) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    !span.is_disabled() && span.context().span().span_context().is_sampled()
}

/// Links `span` to the producing span of each message that carries a trace context.
fn link_messages<'a>(span: &tracing::Span, messages: impl Iterator<Item = &'a OwnedMessage>) {
    use rdkafka::Message as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    for message in messages {
        let headers = message.headers().map(|h| h.as_borrowed());
        if let Some(context) = citypop_runtime::telemetry::span_context_from_headers(headers) {
            span.add_link(context);
        }
    }
}

/// The lists a bulk write keeps between attempts are only touched between awaits,
/// so a poisoned lock can only come from a panic in a test's fake.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::fetch::handover;
    use crate::retry::RetryPolicy;
    use crate::testing::{Answer, FakeEngine, MessageBuilder, RecordedPoison, accept};

    const QUICK_RETRIES: RetryPolicy = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_attempts: 0,
    };

    fn writer(
        engine: FakeEngine,
        abort: watch::Receiver<bool>,
    ) -> BatchWriter<FakeEngine, RecordedPoison> {
        writer_counting_into(engine, abort, &mut Registry::default())
    }

    /// A writer whose metrics the test reads back from `registry`.
    fn writer_counting_into(
        engine: FakeEngine,
        abort: watch::Receiver<bool>,
        registry: &mut Registry,
    ) -> BatchWriter<FakeEngine, RecordedPoison> {
        BatchWriter::new(
            Arc::new(Codec::new()),
            engine,
            RecordedPoison::default(),
            Retry::new(QUICK_RETRIES, abort),
            Arc::new(Metrics::register(registry)),
            BulkLimits {
                documents: 100,
                concurrency: 2,
            },
        )
    }

    /// The metrics as Prometheus scrapes them.
    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    fn not_aborted() -> watch::Receiver<bool> {
        // The sender is dropped: the signal can never be set.
        watch::channel(false).1
    }

    /// A batch of tombstones (the simplest valid writes): (key, partition, offset).
    fn batch(codec: &Codec, deletes: &[(&str, i32, i64)]) -> Batch {
        let mut batch = Batch::default();
        for &(key, partition, offset) in deletes {
            batch.push(
                codec,
                MessageBuilder::tombstone(key).at(partition, offset).build(),
            );
        }
        batch
    }

    fn sorted(mut pairs: Vec<(String, i64)>) -> Vec<(String, i64)> {
        pairs.sort();
        pairs
    }

    fn pairs(expected: &[(&str, i64)]) -> Vec<(String, i64)> {
        expected.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    #[tokio::test]
    async fn only_the_items_the_engine_refused_for_now_are_sent_again() {
        let busy_paris = |w: &Write| match w.key() {
            "paris" => ItemAttempt::Retry("429 too many requests".into()),
            _ => accept(w),
        };
        let writer = writer(
            FakeEngine::answering([Answer::Items(busy_paris)]),
            not_aborted(),
        );
        let batch = batch(&writer.codec, &[("paris", 0, 1), ("oslo", 1, 2)]);
        writer
            .write_batch(&batch)
            .await
            .expect("the batch is written");
        let requests = writer.sink.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        assert_eq!(
            sorted(requests[0].clone()),
            pairs(&[("oslo", 2), ("paris", 1)])
        );
        assert_eq!(requests[1], pairs(&[("paris", 1)]), "only the refused item");
        assert!(writer.poison.taken().is_empty());
        assert!(*writer.engine_writable().borrow(), "writable again");
    }

    #[tokio::test]
    async fn a_failed_request_is_sent_again_whole_and_the_engine_is_unwritable_meanwhile() {
        let writer = writer(
            FakeEngine::answering([
                Answer::Fail("connection refused"),
                Answer::Fail("connection refused"),
            ]),
            not_aborted(),
        );
        let mut writable = writer.engine_writable();
        let batch = batch(&writer.codec, &[("paris", 0, 1), ("oslo", 1, 2)]);
        let seen_unwritable = async { writable.wait_for(|w| !*w).await.is_ok() };
        let (written, seen_unwritable) = tokio::join!(writer.write_batch(&batch), seen_unwritable);
        written.expect("the batch is written once the engine answers");
        assert!(
            seen_unwritable,
            "the engine counted as unwritable while failing"
        );
        assert!(
            *writer.engine_writable().borrow(),
            "and writable again after"
        );
        let requests: Vec<_> = writer.sink.requests().into_iter().map(sorted).collect();
        assert_eq!(requests.len(), 3);
        assert!(
            requests
                .iter()
                .all(|r| *r == pairs(&[("oslo", 2), ("paris", 1)])),
            "{requests:?}"
        );
    }

    #[tokio::test]
    async fn batches_are_reported_finished_in_the_order_they_arrived() {
        let writer = writer(
            // The first batch's request is slow; the second's answers at once.
            FakeEngine::answering([Answer::Slowly(Duration::from_millis(200))]),
            not_aborted(),
        );
        let (to_writer, mut batches) = handover();
        let first = batch(&writer.codec, &[("paris", 0, 1)]);
        let second = batch(&writer.codec, &[("oslo", 1, 2)]);
        let mut finished = Vec::new();
        let feeding = async {
            assert!(to_writer.send(first).await);
            assert!(to_writer.send(second).await);
            drop(to_writer);
        };
        let (written, ()) = tokio::join!(
            writer.write_batches(&mut batches, |batch| {
                finished.push(batch.consumed.next_positions().collect::<Vec<_>>())
            }),
            feeding
        );
        written.expect("both batches are written");
        assert_eq!(
            writer.sink.answered(),
            [pairs(&[("oslo", 2)]), pairs(&[("paris", 1)])],
            "the second batch's request finished first"
        );
        assert_eq!(
            finished,
            [vec![(0, 2)], vec![(1, 3)]],
            "offsets are stored in batch order all the same"
        );
    }

    #[tokio::test]
    async fn only_the_newest_event_of_a_city_is_written_and_its_poison_kept_apart() {
        let writer = writer(FakeEngine::default(), not_aborted());
        let mut batch = batch(&writer.codec, &[("paris", 0, 3)]);
        batch.push(
            &writer.codec,
            MessageBuilder::garbage("paris").at(0, 4).build(),
        );
        batch.push(
            &writer.codec,
            MessageBuilder::tombstone("paris").at(0, 7).build(),
        );
        writer.write_batch(&batch).await.expect("written");
        assert_eq!(writer.sink.requests(), [pairs(&[("paris", 7)])]);
        assert_eq!(
            writer.poison.taken(),
            [("paris".to_owned(), 4, DeadLetterReason::Decode)]
        );
    }

    #[tokio::test]
    async fn poison_is_dead_lettered_in_consumption_order_then_rejected_documents() {
        let reject_lyon = |w: &Write| match w.key() {
            "lyon" => ItemAttempt::Done(ItemOutcome::Rejected("mapper_parsing_exception".into())),
            _ => accept(w),
        };
        let writer = writer(
            FakeEngine::answering([Answer::Items(reject_lyon)]),
            not_aborted(),
        );
        let mut batch = Batch::default();
        for message in [
            MessageBuilder::garbage("b").at(0, 1),
            MessageBuilder::tombstone("lyon").at(0, 2),
            MessageBuilder::garbage("a").at(1, 3),
            MessageBuilder::new(b"", None).at(1, 4),
        ] {
            batch.push(&writer.codec, message.build());
        }
        writer.write_batch(&batch).await.expect("written");
        assert_eq!(
            writer.poison.taken(),
            [
                ("b".to_owned(), 1, DeadLetterReason::Decode),
                ("a".to_owned(), 3, DeadLetterReason::Decode),
                (String::new(), 4, DeadLetterReason::Decode),
                ("lyon".to_owned(), 2, DeadLetterReason::Rejected),
            ]
        );
    }

    #[tokio::test]
    async fn a_redriven_message_that_a_newer_event_beat_counts_as_superseded() {
        let mut registry = Registry::default();
        let stale = |_: &Write| ItemAttempt::Done(ItemOutcome::Stale);
        let writer = writer_counting_into(
            FakeEngine::answering([Answer::Items(stale), Answer::Items(stale)]),
            not_aborted(),
            &mut registry,
        );
        let mut batch = Batch::default();
        batch.push(
            &writer.codec,
            MessageBuilder::tombstone("paris")
                .at(0, 9)
                .header(crate::dead_letter::HEADER_REDRIVEN_FROM, "t.dlq/0/3")
                .build(),
        );
        batch.push(
            &writer.codec,
            MessageBuilder::tombstone("oslo").at(1, 4).build(),
        );
        writer.write_batch(&batch).await.expect("written");
        let text = exposition(&registry);
        assert!(
            text.contains("citypop_indexer_redriven_documents_total{result=\"superseded\"} 1"),
            "{text}"
        );
        assert!(!text.contains("result=\"indexed\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn every_outcome_is_counted_once_per_document() {
        let mut registry = Registry::default();
        let by_city = |w: &Write| match w.key() {
            "paris" | "oslo" => ItemAttempt::Done(ItemOutcome::Created),
            "lyon" => ItemAttempt::Done(ItemOutcome::Updated),
            "rome" => ItemAttempt::Done(ItemOutcome::Deleted),
            "bern" => ItemAttempt::Done(ItemOutcome::Stale),
            _ => ItemAttempt::Done(ItemOutcome::Rejected("mapper_parsing_exception".into())),
        };
        let writer = writer_counting_into(
            FakeEngine::answering([Answer::Items(by_city)]),
            not_aborted(),
            &mut registry,
        );
        let mut batch = Batch::default();
        for (offset, city) in ["paris", "oslo", "lyon", "rome", "bern", "kyiv"]
            .into_iter()
            .enumerate()
        {
            let mut message = MessageBuilder::tombstone(city).at(0, offset as i64);
            if city == "oslo" || city == "kyiv" {
                message = message.header(crate::dead_letter::HEADER_REDRIVEN_FROM, "t.dlq/0/3");
            }
            batch.push(&writer.codec, message.build());
        }
        writer.write_batch(&batch).await.expect("written");
        let text = exposition(&registry);
        for line in [
            "citypop_indexer_documents_indexed_total{result=\"created\"} 2",
            "citypop_indexer_documents_indexed_total{result=\"updated\"} 1",
            "citypop_indexer_documents_indexed_total{result=\"deleted\"} 1",
            "citypop_indexer_documents_indexed_total{result=\"stale\"} 1",
            "citypop_indexer_redriven_documents_total{result=\"indexed\"} 1",
            // The latency of each document written (created, updated or deleted).
            "citypop_indexer_end_to_end_latency_seconds_count 4",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("result=\"superseded\"} 1"), "{text}");
        assert_eq!(
            writer.poison.taken(),
            [("kyiv".to_owned(), 5, DeadLetterReason::Rejected)]
        );
    }

    #[tokio::test]
    async fn the_abort_signal_ends_a_batch_that_is_being_retried() {
        let (abort, aborted) = watch::channel(false);
        let down = std::iter::repeat_with(|| Answer::Fail("connection refused")).take(10_000);
        let writer = writer(FakeEngine::answering(down), aborted);
        let (to_writer, mut batches) = handover();
        let mut finished = 0;
        let feeding = async {
            assert!(
                to_writer
                    .send(batch(&writer.codec, &[("paris", 0, 1)]))
                    .await
            );
            // Once the engine failed a few times, the grace period ends.
            while writer.sink.requests().len() < 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            abort.send(true).expect("the writer listens");
            to_writer
        };
        let (written, _to_writer) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(
                writer.write_batches(&mut batches, |_| finished += 1),
                feeding
            )
        })
        .await
        .expect("the abort ends the retries");
        assert!(matches!(written, Err(Interrupted::Aborted)), "{written:?}");
        assert_eq!(finished, 0, "an abandoned batch is never reported finished");
    }
}
