//! Start-up: wait for Kafka and the engine, then make sure the topics, the index
//! template, the first index and the alias exist (the index side is in
//! [`crate::index_admin`]). Every step is idempotent, so any
//! number of indexers may start at once.

use std::time::Duration;

use anyhow::{Context, bail};
use citypop_runtime::wait_until_ready;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::index_admin::{self, TopicBinding};
use crate::offsets::OffsetReader;

/// How long one metadata request waits for Kafka.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Dead letters are rare, and one partition keeps them in the order they failed.
const DLQ_PARTITIONS: i32 = 1;

/// `indexer setup`: everything the indexer ensures on start, and nothing else.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    ensure_topics(config).await?;
    ensure_index(config).await?;
    println!(
        "set up: topics {} and {}, index template and alias {}",
        config.kafka.topic,
        config.dlq_topic(),
        config.engine.index_alias
    );
    Ok(())
}

/// The index template, the first index and the alias.
pub async fn ensure_index(config: &Config) -> anyhow::Result<()> {
    let offsets = OffsetReader::new(&config.kafka)?;
    // A topic just created answers metadata errors for a moment.
    let marks = wait_until_ready("the topic's partitions", || {
        offsets.watermarks(&config.kafka.topic)
    })
    .await;
    let topic_id = offsets.topic_id(&config.kafka.topic).await?;
    index_admin::ensure_index(
        &config.engine.client()?,
        &config.engine.index_alias,
        &config.index,
        &TopicBinding {
            partitions: Some(marks.len() as i32),
            topic_id,
        },
    )
    .await
}

pub async fn ensure_topics(config: &Config) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config
        .kafka
        .client_config("citypop-indexer-admin")
        .create()
        .context("creating the kafka admin client")?;
    let admin = std::sync::Arc::new(admin);
    wait_until_ready("kafka", || {
        let admin = admin.clone();
        async move {
            // Metadata requests block; keep them off the async workers.
            tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, METADATA_TIMEOUT)
            })
            .await?
            .context("kafka metadata request")
        }
    })
    .await;

    let replication = || TopicReplication::Fixed(config.topics.replication_factor);
    let dlq_topic = config.dlq_topic();
    // Compaction keeps the newest event and the tombstone of every city, so a
    // rebuild reads one message per city instead of every update ever sent.
    let main = NewTopic::new(&config.kafka.topic, config.topics.partitions, replication())
        .set("cleanup.policy", "compact");
    let dlq = NewTopic::new(&dlq_topic, DLQ_PARTITIONS, replication());
    let results = admin
        .create_topics(
            [&main, &dlq],
            &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)),
        )
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(%topic, "topic exists")
            }
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}
