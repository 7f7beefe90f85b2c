//! citypop indexer: Kafka topic → search index.
//!
//! Delivery semantics: **at-least-once delivery with an exactly-once effect.**
//! - Every document is written with `version_type=external` and the event's Kafka
//!   offset as its version. A re-delivered or replayed event is a version conflict,
//!   counted as success; nothing older can overwrite anything newer.
//! - An offset is stored, and later committed, only once everything below it is
//!   indexed, skipped as stale, or acknowledged on the dead-letter topic.
//! - Transient failures (refused connection, timeout, 429, 5xx) are retried with
//!   exponential backoff and full jitter; they never dead-letter and never lose data.
//! - Poison (undecodable messages, unknown schemas, documents the engine rejects)
//!   goes to the dead-letter topic with its original key, value and headers.
//! - On SIGTERM it stops fetching, finishes the batch in flight, commits and exits.
//!
//! The stages, in the order the code runs them, one module each:
//! [`consumer`] (the group member) → [`decode`] → [`batch`] (gathered by [`fetch`])
//! → [`coalesce`] → [`bulk`] (write, then classify each item) → [`dead_letter`] →
//! [`offsets`] (store, then commit). [`batch_writer`] runs the write stages for a
//! batch, with [`retry`]; [`pipeline`] is the one fetch-and-write loop, run by the
//! live indexer ([`live`]) and by `indexer replay` ([`cmd::replay`]). [`guard`]
//! refuses to write into an index built from an earlier incarnation of the topic;
//! [`setup`] and [`index_admin`] create what the indexer needs.

pub mod batch;
pub mod batch_writer;
pub mod bulk;
pub mod cmd;
pub mod coalesce;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod decode;
pub mod fetch;
pub mod guard;
pub mod health;
pub mod index_admin;
pub mod live;
pub mod metrics;
pub mod native;
pub mod offsets;
pub mod pipeline;
pub mod progress;
pub mod retry;
pub mod setup;
pub mod status;
#[cfg(test)]
mod testing;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use citypop_schemas::event::Codec;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use config::Config;

/// The codec: every published schema, plus the writer schemas in `schema_dir`.
pub fn codec(schema_dir: Option<&Path>) -> anyhow::Result<Codec> {
    let mut codec = Codec::new();
    let Some(dir) = schema_dir else {
        return Ok(codec);
    };
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading schema directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "avsc") {
            let json = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let fingerprint = codec
                .add_writer_schema(&json)
                .with_context(|| format!("loading {}", path.display()))?;
            tracing::info!(schema = %path.display(), %fingerprint, "extra writer schema loaded");
        }
    }
    Ok(codec)
}

/// Runs the indexer until `shutdown` resolves, then stops as the delivery contract
/// says: no new fetches, the batch in flight finished (or abandoned uncommitted once
/// the grace period ends), stored offsets committed.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let health = Arc::new(health::Health::new(metrics.ready.clone()));
    let health_addr = health::serve(
        config.health_listen,
        health.clone(),
        metrics.clone(),
        registry,
    )
    .await?;
    tracing::info!(listen = %health_addr, "health endpoint listening");

    let (stop, stopped) = watch::channel(false);
    let (abort, aborted) = watch::channel(false);
    let grace = config.shutdown_grace;
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(grace = ?grace, "stopping: finishing the batch in flight");
        let _ = stop.send(true);
        tokio::time::sleep(grace).await;
        let _ = abort.send(true);
    });

    let client = config.engine.client()?;
    // Waiting for the dependencies can take long; a SIGTERM meanwhile ends it.
    let mut waiting = stopped.clone();
    tokio::select! {
        result = async {
            setup::ensure_topics(&config).await?;
            setup::ensure_index(&config).await
        } => result?,
        _ = waiting.changed() => return Ok(()),
    }
    health.set_up_done();

    let retry = retry::Retry::new(config.retry, aborted.clone());
    let alias = config.engine.index_alias.clone();
    let consumer = Arc::new(consumer::create_consumer(&config, metrics.clone())?);
    metrics.status.watch_group(
        &consumer,
        offsets::OffsetReader::for_group(&config.kafka, &config.consumer_group)?,
        config.kafka.topic.clone(),
        config.consumer_group.clone(),
    );
    let indexer = live::LiveIndexer {
        consumer,
        writer: batch_writer::BatchWriter::new(
            Arc::new(codec(config.schema_dir.as_deref())?),
            bulk::BulkWriter::new(client.clone(), alias.clone()),
            dead_letter::DeadLetters::new(
                &config.kafka,
                config.dlq_topic(),
                retry.clone(),
                metrics.dead_letter.clone(),
            )?,
            retry,
            metrics.clone(),
            config.bulk,
        ),
        guard: guard::TopicGuard {
            offsets: offsets::OffsetReader::for_group(&config.kafka, &config.consumer_group)?,
            client,
            alias: alias.clone(),
            topic: config.kafka.topic.clone(),
        },
        limits: config.batch,
        health,
        metrics,
    };
    tracing::info!(
        topic = %config.kafka.topic,
        group = %config.consumer_group,
        %alias,
        "indexer consuming"
    );
    indexer
        .run(live::Signals {
            stop: stopped,
            abort: aborted,
        })
        .await
}
